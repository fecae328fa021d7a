"""Aggregation on synthetic metrics files written with the real record builder."""

import pandas as pd
import pytest

from conftest import compile_latex_tables
from lmadapt.aggregate import latex_escape, run_aggregate
from lmadapt.checks import check_config
from lmadapt.io import UnreadableFile, write_json
from lmadapt.metrics import classification_record, finish, skipped_record

SETTINGS = check_config({"tasks": {"t": {"labels": ["a", "b"], "data": {"train": {"path": "x.csv"}}}}})["aggregate"]


def write_cell(folder, name, task, method, k, seed, accuracy_pattern, split="test", **keys):
    y_true = [0, 1] * 5
    y_pred = [t if i < accuracy_pattern else 1 - t for i, t in enumerate(y_true)]
    record = classification_record(dict(task=task, model="m", method=method, k=k, examples=k, seed=seed, split=split,
                                        prompt=keys.pop("prompt", "gpt3"), **keys), ["yes", "no"], y_true, y_pred)
    path = folder / f"{name}.json"
    write_json(finish([record], {"wall_seconds": 1.0, "device": "cpu"},
                      {"config_hash": "c", "code_version": "v", "model_revision": "r", "data_fingerprint": "d"}), path)
    return str(path)


def test_means_std_counts_partial_grid_skipped_and_degenerate(tmp_path):
    paths = [write_cell(tmp_path, "a", "rte_task", "icl", 2, 1, 6),
             write_cell(tmp_path, "b", "rte_task", "icl", 2, 2, 8)]
    degenerate = classification_record(dict(task="rte_task", model="m", method="icl", k=32, examples=32, seed=1,
                                            split="test",
                                            prompt="gpt3"), ["yes", "no"], [0, 1] * 5, [0] * 10)
    skipped = skipped_record(dict(task="rte_task", model="m", method="icl", k=128, examples=128, seed=1, split="test",
                                  prompt="gpt3"), "prompt does not fit the context", prefix_tokens=4000, context=2048)
    write_json(finish([degenerate, skipped], {}, {}), tmp_path / "c.json")
    paths.append(str(tmp_path / "c.json"))
    expected = paths + [str(tmp_path / "never_ran.json")]
    summary = run_aggregate(paths + [str(tmp_path / "never_ran.json")], expected, tmp_path / "tables",
                            tmp_path / "figures", SETTINGS)
    assert summary["missing"] == [str(tmp_path / "never_ran.json")]
    assert (tmp_path / "tables/missing.txt").read_text().strip() == str(tmp_path / "never_ran.json")

    tidy = pd.read_parquet(tmp_path / "tables/all.parquet")
    assert len(tidy) == 4 and {"config_hash", "code_version", "model_revision", "wall_seconds"} <= set(tidy.columns)
    table = (tmp_path / "tables/icl.md").read_text()
    assert "| m | gpt3 | 2 | **70.0 ± 14.1 (2)** |" in table  # mean of 60% and 80%, sample std, 2 seeds
    assert "| m | gpt3 | 32 | 50.0 (1)† |" in table
    assert "skipped: prompt does not fit the context" in table
    assert "| majority class |  |  | 50.0 |" in table
    csv = pd.read_csv(tmp_path / "tables/icl.csv")
    assert list(csv.columns[:3]) == ["model", "prompt", "labeled examples"]
    assert (tmp_path / "figures/accuracy_vs_examples.png").stat().st_size > 1000
    assert (tmp_path / "figures/accuracy_vs_examples.pdf").exists()


def test_latex_is_escaped(tmp_path):
    path = write_cell(tmp_path, "a", "rte_task", "icl", 2, 1, 7, prompt="eval_harness")
    run_aggregate([path], [path], tmp_path / "tables", tmp_path / "figures", SETTINGS)
    tex = (tmp_path / "tables/icl.tex").read_text()
    assert r"rte\_task" in tex and r"eval\_harness" in tex and r"in \%" in tex and r"\toprule" in tex
    assert "rte_task" not in tex.replace(r"rte\_task", "")
    assert latex_escape("50% a_b & c#") == r"50\% a\_b \& c\#"


def test_latex_tables_compile(tmp_path, pdflatex):
    """Every table kind, with the caption's symbols, a degenerate mark, a skipped cell, underscores and
    out-of-domain groups, compiles with pdflatex and booktabs."""
    paths = [write_cell(tmp_path, f"{method}{seed}", "rte_task", method, 2, seed, 6 + seed, prompt="eval_harness")
             for method in ("icl", "probe_logreg", "head", "bow_count") for seed in (1, 2)]
    degenerate = classification_record(dict(task="rte_task", model="m", method="icl", k=32, examples=32, seed=1,
                                            split="test", prompt="gpt3"), ["yes", "no"], [0, 1] * 5, [0] * 10)
    skipped = skipped_record(dict(task="rte_task", model="m", method="icl", k=128, examples=128, seed=1, split="test",
                                  prompt="gpt3"), "prompt does not fit the context", prefix_tokens=4000, context=2048)
    hans = classification_record(dict(task="rte_task", model="m", method="icl", k=2, seed=1, split="ood_hans",
                                      prompt="gpt3"), ["yes", "no"], [0, 1] * 3, [0] * 6,
                                 groups={"heuristic": ["lexical_overlap"] * 2 + ["subsequence"] * 4})
    write_json(finish([degenerate, skipped, hans], {}, {}), tmp_path / "c.json")
    paths.append(str(tmp_path / "c.json"))
    run_aggregate(paths, paths, tmp_path / "tables", tmp_path / "figures", SETTINGS)
    tables = sorted((tmp_path / "tables").glob("*.tex"))
    assert len(tables) >= 3 and any("dagger" in table.read_text() for table in tables)
    assert all("≥" not in table.read_text() for table in tables)
    compile_latex_tables(pdflatex, tables, tmp_path)


def test_out_of_domain_groups_and_figure(tmp_path):
    test = write_cell(tmp_path, "t", "rte_task", "icl", 2, 1, 7)
    y_true = [0, 1] * 3
    record = classification_record(dict(task="rte_task", model="m", method="icl", k=2, seed=1, split="ood_hans",
                                        prompt="gpt3"), ["yes", "no"], y_true, [0] * 6,
                                   groups={"heuristic": ["lexical_overlap"] * 2 + ["subsequence"] * 4})
    write_json(finish([record], {}, {}), tmp_path / "o.json")
    run_aggregate([test, str(tmp_path / "o.json")], [], tmp_path / "tables", tmp_path / "figures", SETTINGS)
    table = (tmp_path / "tables/icl.md").read_text()
    assert "rte_task / ood_hans / heuristic=lexical_overlap" in table and "rte_task / test / –" in table
    assert (tmp_path / "figures/in_vs_out_of_domain.png").exists()


def test_bad_metrics_file_is_named(tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UnreadableFile, match=r"bad\.json: not a metrics file \(no 'records'\)$"):
        run_aggregate([str(tmp_path / "bad.json")], [], tmp_path / "t", tmp_path / "f", SETTINGS)
    truncated = tmp_path / "results/metrics/icl/tiny/rte/shots2_seed1.json"  # the workflow's: moved aside
    truncated.parent.mkdir(parents=True)
    truncated.write_text('{"records": [{"task"')
    with pytest.raises(UnreadableFile, match=r"shots2_seed1\.json: unreadable \(not valid JSON: .*\); moved to "
                                             r"shots2_seed1\.json\.corrupt; the next run remakes it \(rule icl\)$"):
        run_aggregate([str(truncated)], [], tmp_path / "t", tmp_path / "f", SETTINGS)
    assert not (tmp_path / "t").exists() and not (tmp_path / "f").exists()
