"""The prepared GPU check (benchmarks/gpu.py) kept working between GPU windows: its CPU smoke run goes through the
same code paths (lmadapt's training loop under DeepSpeed ZeRO-2 and ZeRO-3, fp32 and bf16, ICL and extraction
against full recomputation, numerics) on tiny shapes."""
import json
import math
import subprocess
import sys

import pytest

from conftest import REPO, clean_env


def test_gpu_check_smoke_run_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu.py"), "--cpu-smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "gpu-benchmark.json").read_text())
    finetune = result["finetune"]
    assert [row.get("error") for row in finetune] == [None] * len(finetune)
    assert {(row["method"], row["zero"], row["precision"]) for row in finetune} == {
        ("pattern", "zero3", "fp32"), ("lora_pattern", "zero2", "bf16")}
    for row in finetune:  # trained through lmadapt's loop, costed by the preflight's models
        assert row["optimizer_steps"] == 4 and row["tokens_per_s"] > 0 and math.isfinite(row["loss_last"])
        assert row["predicted_memory_gb"] > 0 and row["flops_per_token"] == (8 if row["method"] == "pattern" else 6) * \
            row["parameters"]
    for row in result["icl"]:  # the prefix cache scores as full recomputation does
        assert row["same_predictions"] == 1.0 and row["max_logprob_difference"] < 1e-4
    assert [row["shots_requested"] for row in result["icl"]] == [0, 32] and result["icl"][1]["shots"] < 32
    for row in result["extract"]:
        assert row["layers"] == 3 and row["max_activation_difference"] < 1e-4
    fp32, bf16 = result["numerics"]
    assert fp32["max_logprob_difference"] == 0.0 and fp32["same_predictions"] == 1.0
    assert 0 < bf16["max_activation_difference"] < 0.1
    collectives = result["collectives"]  # ZeRO-3's collectives in a group of one: timed, at each size
    assert [(row["op"], row["elements"]) for row in collectives] == [
        (op, n) for n in (10**3, 10**5) for op in ("all-gather", "reduce-scatter")]
    assert all(row["gb_per_s"] > 0 and row["microseconds_per_call"] > 0 for row in collectives)
    assert "<!-- gpu:start -->" in (tmp_path / "benchmarks.md").read_text()
    # its measurements in the calibration's format: a paper cell of a measured (stage, model, method) is predicted
    from lmadapt.calibration import job_prediction

    calibration = json.loads((tmp_path / "gpu-calibration.json").read_text())
    assert {(fit["stage"], fit["model"], fit["method"]) for fit in calibration["fits"]} == {
        ("finetune", "opt_1_3b", "pattern"), ("finetune", "opt_6_7b", "lora_pattern"), ("icl", "tiny", None),
        ("extract", "tiny", None)}
    predicted = {"parameters": 10**9, "flops": 1e15, "memory_mb": 2000.0, "load_seconds": 2.0,
                 "compute_seconds": 10.0, "gpus": 1, "model": "opt_1_3b"}
    seconds, megabytes, source = job_prediction(calibration, "finetune", {"model": "opt_1_3b", "method": "pattern"},
                                                predicted)
    fit = next(fit for fit in calibration["fits"] if fit["model"] == "opt_1_3b")
    assert source == "calibrated" and megabytes is None and seconds == pytest.approx(
        fit["startup_s"] + 2e9 / fit["load_bytes_per_s"] + 1e15 / fit["throughput_flops_per_s"])
