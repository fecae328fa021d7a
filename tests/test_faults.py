"""Hostile inputs and faults: each stops with one line naming the file (and config key), before any job where the
config and the files at hand tell; nothing prepared is lost; a killed job leaves no partial file and its rerun
equals an uninterrupted run."""
import json
import os
import re
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import (BIN, EXTRACT_SETTINGS, REPO, clean_env, fixture_config, planned_jobs, run_snakemake,
                      write_config)
from lmadapt.checks import check_config, layer_problems, load_config
from lmadapt.config import ConfigError
from lmadapt.io import UnreadableFile, read_metadata, read_table


def files_of(folder):
    """Every file below `folder` with its bytes (what must survive untouched)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def output(proc) -> str:
    return proc.stdout + proc.stderr


# --- the config and the files at hand tell: stopped as the workflow loads, no job runs


def test_duplicate_yaml_key_is_named_with_its_lines(tmp_path):
    config = write_config(tmp_path / "config.yaml", fixture_config())
    text = config.read_text()
    config.write_text(text + "seeds:\n- 7\n")  # a second `seeds` block: plain YAML would keep it silently
    line = len(text.splitlines()) + 1
    with pytest.raises(ConfigError, match=rf"config\.yaml, line {line}: duplicate key 'seeds' \(first given on "
                                          rf"line 1\); YAML would keep only the last$"):
        load_config(config)
    proc = run_snakemake(tmp_path, "--configfile", str(config), "-n", check=False)
    assert proc.returncode != 0 and f"line {line}: duplicate key 'seeds'" in output(proc)
    assert not (tmp_path / "results").exists()


def test_empty_data_file_stops_before_any_job(tmp_path):
    header_only = tmp_path / "dev.tsv"
    header_only.write_text("index\tsentence1\tsentence2\tlabel\n")
    config = fixture_config()
    config["tasks"]["rte"]["data"]["test"]["path"] = str(header_only)
    config["tasks"]["tweets"]["data"]["train"]["path"] = str(tmp_path / "train.jsonl")
    (tmp_path / "train.jsonl").write_text("")
    proc = run_snakemake(tmp_path, "--configfile", str(write_config(tmp_path / "c.yaml", config)), check=False)
    assert proc.returncode != 0
    assert f"tasks.rte.data.test: {header_only}: no data rows (only a header line)" in output(proc)
    assert f"tasks.tweets.data.train: {tmp_path / 'train.jsonl'}: empty file (no header, no rows)" in output(proc)
    assert not (tmp_path / "results").exists()


def test_layers_out_of_range_stop_before_any_job(tmp_path, tiny_opt):
    config = fixture_config(tiny_opt)
    config["extract"]["layers"] = [1, 99]
    message = r"extract\.layers: layer 99 is out of range for model tiny, which has 3 layers \(0\.\.3, or -1\.\.-4\)"
    assert layer_problems(check_config(config))[0].startswith("extract.layers: layer 99 is out of range")
    proc = run_snakemake(tmp_path, "--configfile", str(write_config(tmp_path / "c.yaml", config)), "-n",
                         check=False)
    assert proc.returncode != 0 and re.search(message, output(proc))
    assert not (tmp_path / "results").exists()
    # the extract job itself checks before it loads the weights (a hub model's layers are known once fetched)
    from lmadapt.extract import run_extract

    with pytest.raises(ConfigError, match=r"extract\.layers: layer 99 is out of range"):
        run_extract(str(tiny_opt), {}, [], EXTRACT_SETTINGS.updated(layers=[99]))


def test_changed_identity_never_replaces_a_prepared_model_or_dataset(tmp_path, tiny_opt):
    config = fixture_config(tiny_opt)
    tweets = config["tasks"]["tweets"]["data"]["train"]  # a hub source: the json builder runs offline
    config["tasks"]["tweets"]["data"]["train"] = {"hub": "json", "split": "train", "data_files": tweets["path"]}
    path = write_config(tmp_path / "c.yaml", config)
    run_snakemake(tmp_path, "resources/models/tiny", "resources/data/tweets/train.parquet", "--configfile", str(path))
    model, data = tmp_path / "resources/models/tiny", tmp_path / "resources/data/tweets/train.parquet"
    prepared = files_of(tmp_path / "resources")
    mtime = os.stat(model / "model.safetensors").st_mtime_ns
    assert not os.stat(model).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # write-protected
    assert not os.stat(data).st_mode & stat.S_IWUSR

    typo = fixture_config(tiny_opt)
    typo["models"]["tiny"]["id"] = "facebook/opt-125x"
    typo["tasks"]["tweets"]["data"]["train"] = dict(config["tasks"]["tweets"]["data"]["train"], split="tain")
    proc = run_snakemake(tmp_path, "--configfile", str(write_config(tmp_path / "typo.yaml", typo)), check=False)
    assert proc.returncode != 0
    assert (f"models.tiny: resources/models/tiny was prepared from id '{tiny_opt}'; the config now says "
            f"id 'facebook/opt-125x'. To prepare that, remove resources/models/tiny") in output(proc)
    assert "tasks.tweets.data.train: resources/data/tweets/train.parquet was fetched from" in output(proc)
    assert files_of(tmp_path / "resources") == prepared and not (tmp_path / "results/metrics").exists()

    # nothing prepared is any job's output: --forceall and --forcerun plan no fetch (as root here, whom file modes
    # do not stop), and a forced run leaves the folder and the file as they were
    for force in (["--forceall"], ["--forcerun", "fetch_model", "fetch_data"]):
        plan = planned_jobs(run_snakemake(tmp_path, "--configfile", str(path), *force, "-n"))
        assert plan["sample"] and "fetch_model" not in plan and "fetch_data" not in plan
    run_snakemake(tmp_path, "results/samples/tweets/test.parquet", "--configfile", str(path), "--forceall")
    assert files_of(tmp_path / "resources") == prepared
    assert os.stat(model / "model.safetensors").st_mtime_ns == mtime

    # a fetch that fails (here: a folder without a model) leaves the prepared folder as it was
    os.chmod(model, 0o755)  # as its owner would, to replace it on purpose
    fetch = subprocess.run([str(BIN / "lmadapt"), "fetch-model", "--name", "tiny", "--model",
                            json.dumps({"id": str(tmp_path)}), "--out", str(model)],
                           capture_output=True, text=True, env=clean_env())
    assert fetch.returncode == 2 and "without config.json" in fetch.stderr
    assert files_of(tmp_path / "resources") == prepared


def test_a_model_folder_without_weights_is_one_line_naming_it(tmp_path, tiny_opt):
    folder = tmp_path / "half_copied"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_opt / "config.json").read_bytes())  # the weights never arrived
    fetch = subprocess.run([str(BIN / "lmadapt"), "fetch-model", "--name", "tiny", "--model",
                            json.dumps({"id": str(folder)}), "--out", str(tmp_path / "prepared")],
                           capture_output=True, text=True, env=clean_env())
    assert fetch.returncode == 2 and fetch.stderr.strip().splitlines() == [
        f"lmadapt fetch-model: error: model tiny: local folder {folder} has config.json but no weights "
        f"(model*.safetensors or pytorch_model*.bin)"]
    assert not (tmp_path / "prepared").exists()


def test_a_job_that_cannot_write_says_where_in_one_line(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the job expects a folder")
    proc = subprocess.run([str(BIN / "lmadapt"), "resolved-config", "--config-json", "{}", "--out",
                           str(blocker / "plan/config.yaml")], capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"lmadapt resolved-config: error: {blocker / 'plan'}: Not a directory"], proc.stderr


def test_local_model_path_is_never_taken_for_a_hub_id(tmp_path):
    config = fixture_config()
    config["models"] = {"tiny": {"id": "models/tiny/opt-125m"}}  # no ./, but not a hub id (two slashes)
    with pytest.raises(ConfigError, match=r"models\.tiny\.id: local folder models/tiny/opt-125m not found"):
        check_config(config)


# --- a corrupted intermediate: named with the rule that makes it, moved aside so the next run remakes it


def test_unreadable_intermediate_is_named_and_moved_aside(tmp_path):
    sample = tmp_path / "results/samples/rte/test.parquet"
    sample.parent.mkdir(parents=True)
    pd.DataFrame({"id": ["a"]}).to_parquet(sample)
    with pytest.raises(UnreadableFile, match=r"test\.parquet: unreadable \(no 'lmadapt' metadata: not written by "
                                             r"lmadapt\); moved to test\.parquet\.corrupt; the next run remakes it "
                                             r"\(rule sample\)$"):
        read_table(sample, "lmadapt")
    truncated = tmp_path / "results/activations/tiny/rte/none/test.parquet"
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes((sample.with_name("test.parquet.corrupt")).read_bytes()[:-100])
    with pytest.raises(UnreadableFile, match=r"unreadable \(not a complete Parquet file: truncated or overwritten\)"
                                             r".*\(rule extract\)$"):
        read_metadata(truncated, "lmadapt")
    with pytest.raises(UnreadableFile, match=r"activations/tiny/rte/none/test\.parquet: not found \(rule extract "
                                             r"makes it\)$"):
        read_table(truncated, "lmadapt")
    mine = tmp_path / "mine.parquet"  # not the workflow's: named, never moved
    mine.write_bytes(b"PAR1 not really")
    with pytest.raises(UnreadableFile, match=r"mine\.parquet: unreadable \(not a complete Parquet file"):
        read_table(mine, "lmadapt")
    assert mine.exists()


# --- killed jobs: no partial file under a final name; the rerun equals an uninterrupted run


def assert_same_results(run, reference):
    """Every result of `run` equals the reference's of the same name (the reference may have more seeds, models and
    samples: its tables summarise more, so tables are compared by being there)."""
    ran, expected = comparable(run), comparable(reference)
    assert set(ran) <= set(expected), sorted(set(ran) - set(expected))
    cells = sorted(name for name in ran if not name.startswith("results/tables/"))
    assert len(cells) > 20 and {name: ran[name] for name in cells} == {name: expected[name] for name in cells}
    assert {name for name in ran if name.startswith("results/tables/")} == {
        name for name in expected if name.startswith("results/tables/")}


HOW_IT_RAN = ("train_seconds", "train_tokens_per_s", "resumed_from_micro_step")  # fine-tuning details: timing


def comparable(folder):
    """What a run computed: Parquet and table files byte for byte, metrics without how long the job took (the
    plan's too: it says how long it took)."""
    out = {}
    for path in sorted((folder / "results").rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.suffix == ".json" and "/metrics/" in name:
            records = json.loads(path.read_text())["records"]
            out[name] = [dict({k: v for k, v in r.items() if k != "cost"}, details={
                k: v for k, v in r.get("details", {}).items() if k not in HOW_IT_RAN}) for r in records]
        elif path.suffix in (".parquet", ".md", ".tex") and not any(
                part in name for part in ("results/finetune/", "results/plan/", "all.parquet")):
            out[name] = path.read_bytes()
    return out


def assert_status_of_a_killed_run(workdir: Path) -> None:
    from lmadapt.status import grid_jobs, status_markdown

    jobs = grid_jobs(load_config(workdir / "config.yaml"), workdir)
    states = Counter(job["state"] for job in jobs)
    assert states["finished"] and states["failed"] and states["not yet run"], states
    page = status_markdown(jobs)
    assert f"{states['failed']} failed" in page and "## Failed" in page
    for job in (job for job in jobs if job["state"] == "failed"):  # its log, and its last line: why
        assert str(job["log"]) in page
        assert all(line.strip() in page for line in job["log"].read_text().splitlines()[-1:])


@pytest.mark.slow
def test_every_stage_killed_while_publishing_reruns_to_the_same_results(tmp_path, finished_run):
    reference, killed = finished_run.workdir, tmp_path / "killed"
    killed.mkdir()
    # the reference's config on its decoder, first seed and smallest RTE sample: every stage, 30 jobs instead of
    # 84; each job computes what the reference's job of the same name did, the tables summarise less
    config = yaml.safe_load(finished_run.config.read_text())
    tasks = dict(config["tasks"], rte=dict(config["tasks"]["rte"], k=config["tasks"]["rte"]["k"][:1]))
    write_config(killed / "config.yaml", dict(config, seeds=config["seeds"][:1], tasks=tasks,
                                              models={"tiny": config["models"]["tiny"]},
                                              icl={k: v for k, v in config["icl"].items() if k != "models"}))

    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    (wrapper / "lmadapt").write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests/killing_lmadapt.py'} \"$@\"\n")
    (wrapper / "lmadapt").chmod(0o755)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = clean_env(KILL_MARKS=str(marks), PYTHONPATH=str(REPO / "workflow"))
    env["PATH"] = f"{wrapper}{os.pathsep}{env['PATH']}"
    for attempt in range(8):  # a killed job's dependents wait for the next run
        proc = run_snakemake(killed, "--configfile", str(killed / "config.yaml"), "--keep-going", check=False,
                             env=env)
        for stage in ("samples", "activations", "teacher"):  # whatever is under a final name is whole
            for path in (killed / "results" / stage).rglob("*.parquet"):
                read_metadata(path, "lmadapt")
        if attempt == 1:  # half-finished: `lmadapt status` says what is done, what failed (and how), what is left
            assert_status_of_a_killed_run(killed)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, output(proc)[-3000:]
    assert {m.name for m in marks.iterdir()} >= {"sample", "fetch-model", "extract", "probe", "bow", "icl", "teacher",
                                                 "finetune", "preflight", "aggregate"}
    leftovers = [p for folder in ("results", "resources") for p in (killed / folder).rglob(".*.tmp*")]
    assert not leftovers  # every killed writer's temporary files went with its rerun
    assert_same_results(killed, reference)
    assert files_of(killed / "resources/models/tiny") == files_of(reference / "resources/models/tiny")

    # a sample truncated behind the workflow's back: its reader names it and moves it aside; the next run remakes
    # it and every result from it comes out as before
    sample = killed / "results/samples/rte/train_k2_seed1.parquet"
    sample.write_bytes(sample.read_bytes()[:200])
    proc = run_snakemake(killed, "--configfile", str(killed / "config.yaml"), "--keep-going", check=False)
    logs = "".join(p.read_text() for p in (killed / "results/logs").rglob("*.log"))
    assert proc.returncode != 0
    assert ("results/samples/rte/train_k2_seed1.parquet: unreadable (not a complete Parquet file: truncated or "
            "overwritten); moved to train_k2_seed1.parquet.corrupt; the next run remakes it (rule sample)") in logs
    run_snakemake(killed, "--configfile", str(killed / "config.yaml"))
    assert_same_results(killed, reference)
    assert pq.read_metadata(sample).num_rows == 4
