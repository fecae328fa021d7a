"""The workflow end to end on fixture data: outputs, the report, no-op reruns, exact reruns after a content
change."""
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, fixture_config, planned_jobs, report_items, run_snakemake, write_config


def plan_after(run, model_dirs, change) -> dict[str, int]:
    """The jobs a dry run of the finished run plans after `change` (a function editing the fixture config)."""
    changed = fixture_config(*model_dirs)
    change(changed)
    path = write_config(run.workdir / "changed.yaml", changed)
    return planned_jobs(run_snakemake(run.workdir, "--configfile", str(path), "-n"))


def test_a_finished_run_has_every_output_and_keeps_demonstrations_out_of_training(finished_run):
    results = finished_run.workdir / "results"
    assert (finished_run.workdir / "resources/models/tiny/lmadapt_model.json").exists()
    assert list((finished_run.workdir / "resources/models/tiny").glob("*.safetensors"))
    for model in ("tiny", "bert"):
        assert len(list((results / f"metrics/probe/{model}/rte").rglob("*.json"))) == 2 * 2 * 2  # prompts x k x seeds
    assert len(list((results / "metrics/icl/tiny").rglob("*.json"))) == 2 * (1 + 2)  # tasks x (0-shot + seeds)
    assert not (results / "metrics/icl/bert").exists()  # an encoder has no ICL
    tidy = pd.read_parquet(results / "tables/all.parquet")
    assert {"probe_logreg", "probe_mlp", "bow_count", "icl", "lora_pattern", "distill", "head"} <= set(tidy["method"])
    assert len(list((results / "metrics/finetune/tiny/rte").rglob("*.json"))) == 2 * 2  # methods x seeds
    assert set(tidy["split"]) == {"test", "ood_hans"} and tidy["code_version"].notna().all()
    # the encoder's activations, probes and classification head beside the decoder's in-context learning
    test = tidy[(tidy["split"] == "test") & tidy["group"].isna()]
    assert set(zip(test["model"], test["method"])) >= {("bert", "probe_logreg"), ("bert", "probe_mlp"),
                                                       ("bert", "head"), ("tiny", "icl")}
    assert test["accuracy"].notna().all()
    assert (results / "tables/icl.md").exists() and (results / "figures/probe_accuracy_vs_layer.png").exists()
    assert "labeled examples" in (results / "tables/finetune.md").read_text()
    plan = json.loads((results / "plan/preflight.json").read_text())
    assert plan["cells"]["icl"] == 6 and not plan["errors"] and "Estimated total" in (
        results / "plan/preflight.md").read_text()
    # a few-shot prompt's demonstrations never train a probe or a student: none and fewshot probes see the same rows
    demos = set(pd.read_parquet(results / "samples/rte/demos_seed1.parquet")["id"])
    for k in (2, 3):
        assert not demos & set(pd.read_parquet(results / f"samples/rte/train_k{k}_seed1.parquet")["id"])
    for prompt in ("none", "fewshot"):
        record = json.loads((results / f"metrics/probe/tiny/rte/{prompt}/k2_seed1.json").read_text())["records"][0]
        assert record["details"]["n_train"] == 4 and record["examples"] == 4 + (2 if prompt == "fewshot" else 0)
    teacher = pd.read_parquet(results / "teacher/tiny/rte/k2_seed1.parquet")
    assert not set(json.loads(pq.read_schema(results / "teacher/tiny/rte/k2_seed1.parquet").metadata[b"lmadapt"])[
        "demonstration_ids"]) & set(teacher["id"])
    samples = results / "samples"
    assert sorted(p.name for p in (samples / "rte").iterdir()) == [
        "demos_seed1.parquet", "demos_seed2.parquet", "ood_hans.parquet", "test.parquet", "train_k2_seed1.parquet",
        "train_k2_seed2.parquet", "train_k3_seed1.parquet", "train_k3_seed2.parquet"]
    assert len(pd.read_parquet(samples / "tweets/train_k1_seed2.parquet")) == 3
    assert (results / "logs/sample/rte/test.log").exists()


def test_the_report_holds_tables_figures_plan_config_and_runtimes(finished_run, tiny_opt, tiny_bert, tmp_path):
    run = finished_run.copy(tmp_path / "run")  # the report is written into the working directory
    run_snakemake(run.workdir, "--configfile", str(run.config), "--report", "report.html")
    items = report_items(run.workdir / "report.html")
    results = run.workdir / "results"
    assert {"results/tables/icl.md", "results/figures/accuracy_vs_examples.png", "results/plan/preflight.md",
            "results/plan/config.yaml", "results/plan/runtimes.md"} <= set(items)
    assert "Estimated total" in items["results/plan/preflight.md"]
    resolved = yaml.safe_load(items["results/plan/config.yaml"])
    assert "threads" not in resolved and "mem_mb" not in resolved["models"]["tiny"]
    assert resolved["probe"]["mlp"]["epochs"] == fixture_config(tiny_opt, tiny_bert)["probe"]["mlp"]["epochs"]
    assert resolved["aggregate"]["tables"]["finetune"]["methods"]  # defaults filled in
    logs = Counter(Path(log.relative_to(results / "logs").parts[0]).stem for log in (results / "logs").rglob("*.log"))
    runtimes = {row[0]: int(row[1]) for row in (line.strip("| ").split(" | ")
                                                for line in items["results/plan/runtimes.md"].splitlines()
                                                if line.startswith("| ") and not line.startswith("| rule"))}
    assert runtimes == {rule: n for rule, n in logs.items() if rule not in ("runtimes", "resolved_config",
                                                                          "calibration")}
    assert runtimes["probe"] == len(list((results / "metrics/probe").rglob("*.json"))) and runtimes["aggregate"] == 1


def layout_cell(rule: str, cell: dict) -> str:
    from lmadapt import layout

    return layout.CELLS[rule].format(**cell)


def test_each_model_job_measures_the_work_the_preflight_predicted_and_the_calibration_sizes_requests(finished_run):
    """A model job's cost record counts its work in the preflight's units, and equals its prediction for the
    cell; the calibration fits every costed stage and model on them; the requests of the jobs follow it."""
    from lmadapt.calibration import cell_key, plan_predictions, read_measurements
    from lmadapt.checks import load_config
    from lmadapt.sizing import Requests

    results = finished_run.workdir / "results"
    predictions = plan_predictions(json.loads((results / "plan/preflight.json").read_text()))
    measured = [m for m in read_measurements(results / "benchmarks") if m["cost"]]
    rules = Counter(m["rule"] for m in measured)
    assert set(rules) == {"extract", "icl", "teacher", "finetune"} and rules["finetune"] == 6  # every model job
    for m in measured:
        cost = m["cost"]
        assert cost["load_seconds"] > 0 and cost["compute_seconds"] > 0 and cost["peak_rss_mb"] > 0
        assert cost["device"] == "cpu" and m["wall_s"] > cost["wall_seconds"]  # the process started before
        assert cost["flops"] == pytest.approx(predictions[m["rule"], cell_key(m["rule"], m["cell"])]["flops"]), m
    for m in (m for m in measured if m["rule"] == "finetune"):  # DeepSpeed's monitor: every optimizer step's loss
        monitor = results / "finetune" / layout_cell("finetune", m["cell"]) / "monitor/train"
        steps = json.loads((results / "metrics/finetune" / f"{layout_cell('finetune', m['cell'])}.json").read_text())[
            "records"][0]["details"]["optimizer_steps"]
        assert len(pd.read_csv(monitor / "Train_Samples_train_loss.csv")) == steps
    calibration = json.loads((results / "plan/calibration.json").read_text())
    fitted = {(fit["stage"], fit["model"]) for fit in calibration["fits"]}
    assert fitted == {(m["rule"], m["cell"]["model"]) for m in measured}
    assert "## The grid" in (results / "plan/calibration.md").read_text()
    assert "0 failed" in (results / "plan/status.md").read_text()
    # every job asks for its calibrated prediction; without a calibration, for the preflight's estimate
    config = load_config(finished_run.config)
    cell = {"model": "tiny", "task": "rte", "shots": "2", "seed": "1"}
    requests = Requests(config, finished_run.workdir)
    assert requests.prediction("icl", cell)[2] == "calibrated" and requests.prediction("probe", dict(
        cell, prompt="none", k="2"))[2] == "measured"
    seconds, megabytes, _ = requests.prediction("icl", cell)
    assert requests.runtime("icl", cell, 2, 240) == 2 * max(-(-seconds * 1.5 // 60), config["requests"]["min_runtime"])
    assert requests.mem_mb("icl", cell, 1, 1000) == max(-(-megabytes * 1.5 // 1), 1000)
    elsewhere = finished_run.workdir.parent / "plan_only"
    (elsewhere / "results/plan").mkdir(parents=True, exist_ok=True)
    (elsewhere / "results/plan/preflight.json").write_text((results / "plan/preflight.json").read_text())
    assert Requests(config, elsewhere).prediction("icl", cell)[2] == "preflight"
    assert Requests(config, elsewhere).mem_mb("icl", cell, 1, 1000) == 1000  # host memory: once measured


def test_the_pilot_runs_the_cheapest_and_costliest_cell_of_each_costed_group_then_calibrates(finished_run,
                                                                                              tmp_path_factory):
    """The pilot's cells are ordinary cells: per (stage, model, method) the two ends of the preflight's costs; the
    pilot runs what of them is missing and calibrates on it; the full run then does not redo them."""
    from lmadapt import layout
    from lmadapt.calibration import cell_fields, pilot_cells, plan_predictions

    plan = json.loads((finished_run.workdir / "results/plan/preflight.json").read_text())
    cells = pilot_cells(plan)
    groups = {(rule, p["model"], dict(zip(cell_fields(rule), key)).get("method"))
              for (rule, key), p in plan_predictions(plan).items()}
    assert len(groups) <= len(cells) <= 2 * len(groups)
    run = finished_run.copy(tmp_path_factory.mktemp("pilot"))  # as deep as the original: the same paths
    icl = next(cell for rule, cell in cells if rule == "icl")
    (run.workdir / layout.METRICS["icl"].format(**icl)).unlink()
    ran = planned_jobs(run_snakemake(run.workdir, "pilot", "--configfile", str(run.config)))
    assert ran == {"icl": 1, "pilot": 1}
    assert (run.workdir / layout.PILOT_CALIBRATION_JSON).is_file()
    assert "icl" not in planned_jobs(run_snakemake(run.workdir, "--configfile", str(run.config), "-n"))


def test_a_finished_run_reruns_only_the_jobs_a_change_makes_stale(finished_run, tiny_opt, tiny_bert):
    run, models = finished_run, (tiny_opt, tiny_bert)
    assert "Nothing to be done" in run_snakemake(run.workdir, "--configfile", str(run.config), "-n").stdout

    def resources(c):  # Slurm requests and how jobs run (batch sizes of inference): never what they compute
        c["models"]["tiny"]["mem_mb"] = 3000
        c["threads"] = 3
        c["requests"] = {"margin": 3.0, "min_runtime": 30}
        c["extract"]["batch_size"] = 3
        c["icl"]["batch_size"] = 5
        c["finetune"]["distill"]["batch_size"] = 7
        c["finetune"].update(checkpoint_every=7, keep_checkpoint=True)
    assert plan_after(run, models, resources) == {}

    def probe(c):  # one probe hyperparameter: only the probes (both models') and the tables
        c["probe"]["mlp"]["epochs"] = 21
    report = {"resolved_config": 1, "aggregate": 1, "runtimes": 1, "calibration": 1, "all": 1}  # the report's
    assert plan_after(run, models, probe) == {"probe": 2 * 8} | report

    def lora(c):  # a LoRA setting: only the LoRA jobs (and the plan, which estimates LoRA's size)
        c["finetune"]["lora"] = {"r": 4}
    assert plan_after(run, models, lora) == {"finetune": 2, "preflight": 1} | report

    def new_k(c):  # a k added to a task and to fine-tuning: only the new cells
        c["tasks"]["rte"]["k"] = [2, 3, 4]
        c["finetune"]["k"] = [2, 4]
    assert plan_after(run, models, new_k) == {  # extract and probe: 2 models x 2 seeds x (none + fewshot)
        "sample": 2, "extract": 2 * (2 + 2), "probe": 2 * 4, "bow": 2, "teacher": 2, "finetune": 2 * (2 + 1),
        "preflight": 1} | report

    def new_method(c):
        c["finetune"]["methods"] = ["lora_pattern", "distill", "head"]
    assert plan_after(run, models, new_method) == {"finetune": 2, "preflight": 1} | report

    def tweets_test(c):  # content change in one task's settings: its jobs, none of rte's
        c["tasks"]["tweets"]["n_test"] = 4
    assert plan_after(run, models, tweets_test) == {"sample": 2 + 2 + 1, "bow": 2, "icl": 3, "preflight": 1} | report


def test_bad_config_stops_before_any_job(tmp_path):
    bad = fixture_config()
    bad["tasks"]["rte"]["k"] = [-3]
    config = write_config(tmp_path / "config.yaml", bad)
    proc = run_snakemake(tmp_path, "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert "tasks.rte.k[0]: -3 is less than the minimum of 1" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_missing_data_file_is_named(tmp_path):
    broken = fixture_config()
    broken["tasks"]["rte"]["data"]["test"]["path"] = str(tmp_path / "absent.tsv")
    config = write_config(tmp_path / "config.yaml", broken)
    proc = run_snakemake(tmp_path, "--configfile", str(config), "-n", check=False)
    assert proc.returncode != 0 and "absent.tsv" in proc.stdout + proc.stderr


def test_paper_grid_plans(tmp_path):
    plan = planned_jobs(run_snakemake(tmp_path, "--configfile", str(REPO / "config/paper.yaml"), "-n"))
    # training samples, one demonstration pool per task and seed, test samples, HANS, IMDB's full training set
    assert plan["sample"] == 4 * 3 * 10 + 4 * 10 + 4 + 1 + 10
    # login node: 9 dataset splits, Alpaca GPT-4 and DialogSum; 10 models and the hate-speech reward model
    assert plan["fetch_data"] == 9 and plan["fetch_corpus"] == 2 and plan["fetch_model"] == 11
    assert plan["preflight"] == 1
    # derived: every OPT and GPT-2 instruction-tuned on Alpaca GPT-4; Flan-T5 aligned by PPO
    assert plan["instruct"] == 8 and plan["ppo"] == 1 and plan["derived_summary"] == 1
    # IMDB: without a prompt, every training sample and the test sample; after each seed's prefix, the seed's
    # training samples and the test sample; for each of the 7 OPTs and its Alpaca-tuned twin
    assert plan["extract"] == 2 * 7 * ((3 * 10 + 1) + 10 * (3 + 1))
    assert plan["probe"] == 2 * 7 * 2 * 3 * 10
    # OPT on every task: zero-shot once, 2/32/128 shots per seed; Flan-T5 on tweets: 0 once, 1 and 3 per seed;
    # each twice (the base and its derived model)
    assert plan["icl"] == 2 * (7 * 4 * (1 + 3 * 10) + (1 + 2 * 10))
    # study 5: OPT on RTE, 4 methods; study 2: GPT-2 head; study 3: Flan-T5 seq2seq, lora_seq2seq; study 4:
    # RoBERTa head, lora_head; the derived models as their bases (RoBERTa has none)
    assert plan["finetune"] == (2 * (7 * 4 + 1 + 2) + 2) * 3 * 10 and plan["teacher"] == 2 * 7 * 3 * 10
    assert plan["bow"] == 4 * 3 * 10 + 10  # and IMDB's full training set, once per seed


@pytest.mark.slow  # 5,000 metrics files written and planned
def test_aggregate_reads_its_inputs_from_a_file_at_any_scale(tmp_path):
    """5,000 metrics files (their paths, one shell command, would be far over one argument's 128 KiB) aggregate in
    one job."""
    from lmadapt.io import write_json
    from lmadapt.metrics import classification_record, finish

    config = fixture_config()
    config["tasks"] = {"tweets": dict(config["tasks"]["tweets"], k=list(range(1, 101)), demonstrations=0)}
    config["seeds"] = list(range(50))
    path = write_config(tmp_path / "config.yaml", config)
    labels = ["negative", "neutral", "positive"]
    for k in range(1, 101):
        for seed in range(50):
            keys = dict(task="tweets", model="none", method="bow_count", prompt="none", k=k, examples=3 * k,
                        seed=seed, split="test")
            record = classification_record(keys, labels, [0, 1, 2, 0], [0, 1, 2, (k + seed) % 3])
            write_json(finish([record], {}, {}), tmp_path / f"results/metrics/bow/tweets/k{k}_seed{seed}.json")
    args = ("results/tables", "--configfile", str(path), "--allowed-rules", "aggregate")
    assert planned_jobs(run_snakemake(tmp_path, *args, "-n")) == {"aggregate": 1}
    run_snakemake(tmp_path, *args)
    tidy = pd.read_parquet(tmp_path / "results/tables/all.parquet")
    expected = (tmp_path / "results/tables/expected.txt").read_text().split()
    assert len(tidy) == 5_000 and len(expected) == 5_000 and len(" ".join(expected)) > 128 * 1024
    assert (tmp_path / "results/tables/missing.txt").read_text() == ""
