import json

import numpy as np
import pandas as pd
import pytest

from conftest import EXTRACT_SETTINGS as SETTINGS, rte_task
from lmadapt.checks import check_config
from lmadapt.extract import run_extract
from lmadapt.metrics import KEYS, classification_record
from lmadapt.probe import MLPProbe, fit_logreg, run_bow, run_probe
from lmadapt.sample import run_sample
from lmadapt.settings import section_settings


def test_metrics_record_counts_and_flags_degenerate():
    labels = ["a", "b", "c"]
    record = classification_record({"task": "t", "split": "test"}, labels, [0, 0, 1, 2], [0, 1, 1, 1],
                                   groups={"heuristic": ["x", "x", "y", "y"]})
    assert set(KEYS) <= set(record) and record["n"] == 4 and record["accuracy"] == 0.5
    assert record["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert record["per_class"]["b"] == {"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1}
    assert record["predicted_distribution"] == {"a": 0.25, "b": 0.75, "c": 0.0}
    assert record["majority_baseline"] == 0.5 and not record["degenerate"]
    assert record["by_group"]["heuristic"] == {"x": {"n": 2, "accuracy": 0.5}, "y": {"n": 2, "accuracy": 0.5}}
    assert classification_record({}, labels, [0, 1, 2] * 7, [1] * 21)["degenerate"]


def test_probes_learn_a_separable_problem():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 16)) + np.eye(3, 16)[y] * 4
    model, c = fit_logreg(x, y, [0.01, 1.0], 3, seed=0, scale=True)
    assert (model.predict(x) == y).mean() == 1.0 and c in (0.01, 1.0)
    mlp = MLPProbe(hidden=32, dropout=0.1, weight_decay=0.0, lr=0.01, epochs=200, patience=20, val_fraction=0.2,
                   seed=0).fit(x, y)
    assert (mlp.predict(x) == y).mean() >= 0.95 and 1 <= mlp.best_epoch <= 200


@pytest.fixture(scope="module")
def rte_activations(tiny_opt, rte_samples, tmp_path_factory):
    task, samples = rte_samples(5, demonstrations=3)
    folder = tmp_path_factory.mktemp("probe")
    settings = SETTINGS.updated(layers=[1, -1])
    run_extract(str(tiny_opt), task, [(str(samples / f"{name}.parquet"), str(folder / f"acts_{name}.parquet"))
                                      for name in ("train", "test", "ood_hans")],
                settings, demos_path=str(samples / "demos.parquet"), seed=1)
    return samples, folder


def test_probe_job_covers_every_layer_pooling_probe_and_split(rte_activations):
    samples, folder = rte_activations
    config = check_config({"tasks": {"x": rte_task()}, "probe": {"mlp": {"epochs": 20}}})
    settings = section_settings("probe", config["probe"])
    out = folder / "metrics.json"
    run_probe(str(folder / "acts_train.parquet"),
              {"test": str(folder / "acts_test.parquet"), "ood_hans": str(folder / "acts_ood_hans.parquet")},
              {"test": str(samples / "test.parquet"), "ood_hans": str(samples / "ood_hans.parquet")},
              str(out), settings, {"task": "rte", "model": "tiny", "prompt": "fewshot", "k": 8, "seed": 1})
    records = json.loads(out.read_text())["records"]
    assert len(records) == 2 * 2 * 2 * 2  # layers x poolings x probes x splits
    assert {(r["method"], r["layer"], r["pooling"], r["split"]) for r in records} == {
        (m, l, p, s) for m in ("probe_logreg", "probe_mlp") for l in (1, 3) for p in ("last", "mean")
        for s in ("test", "ood_hans")}
    first = records[0]
    # the prefix's 3 demonstrations come from the pool: every training row trains the probe, as without a prompt
    assert first["details"]["n_train"] == 10 and first["examples"] == 10 + 3
    assert first["provenance"]["model_revision"] and first["provenance"]["code_version"]
    assert first["cost"]["wall_seconds"] > 0 and first["cost"]["device"] == "cpu"
    hans = next(r for r in records if r["split"] == "ood_hans")
    assert set(hans["by_group"]["heuristic"]) == {"lexical_overlap", "subsequence", "constituent"}


def test_bow_baseline(tmp_path):
    words = {0: "awful boring dull bad", 1: "great wonderful fun good"}
    rows = [{"text": f"{words[i % 2].split()[i % 4]} film {i}", "label": i % 2} for i in range(80)]
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    task = check_config({"tasks": {"t": {"labels": ["neg", "pos"], "n_test": 20, "demonstrations": 0,
                                         "data": {"train": {"path": str(path)}}}}})["tasks"]["t"]
    run_sample("t", task, {"train": str(path)}, "train", tmp_path / "train.parquet", k=20, seed=1)
    run_sample("t", task, {"train": str(path)}, "test", tmp_path / "test.parquet")
    settings = section_settings("bow", check_config({"tasks": {"t": task}, "bow": {"vectorizer": "tfidf"}})["bow"])
    result = run_bow(str(tmp_path / "train.parquet"), {"test": str(tmp_path / "test.parquet")},
                     str(tmp_path / "bow.json"), settings, {"task": "t", "k": 20, "seed": 1})
    record = result["records"][0]
    assert record["method"] == "bow_tfidf" and record["accuracy"] == 1.0 and record["details"]["vocabulary"] > 8
    # study 2's 80/20: a fifth of each label's rows validates; train, validation and test are all reported
    result = run_bow(str(tmp_path / "train.parquet"), {"test": str(tmp_path / "test.parquet")},
                     str(tmp_path / "bow.json"), settings.updated(validation=0.2), {"task": "t", "k": 20, "seed": 1})
    records = {r["split"]: r for r in result["records"]}
    assert list(records) == ["train", "validation", "test"]
    assert records["train"]["n"] == 32 and records["validation"]["n"] == 8 and records["test"]["n"] == 20
    assert records["validation"]["per_class"]["neg"]["support"] == 4 and records["train"]["details"]["n_train"] == 32
    assert all(r["examples"] == 40 and r["accuracy"] == 1.0 for r in records.values())
