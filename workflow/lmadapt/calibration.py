"""The preflight's cost model calibrated on finished jobs (rule `calibration`, `lmadapt calibrate`): what each job
measured (its cost record, metrics.write_cost, and Snakemake's benchmark file) against what the preflight
predicted for its cell (results/plan/preflight.json), fitted per (stage, model, method, device) (a method: the
fine-tuning method, whose FLOPs per token the formula counts but whose speed it does not):

    compute seconds = intercept + FLOPs / throughput       least squares over the jobs (FLOPs: costs.py, the
                                                           same formula in the preflight and in the job)
    load seconds    = weight bytes / load rate             the 16-bit weights, as the preflight counts them
    start-up        = the benchmark's wall less the job's  Python's start and imports, before the job's clock
    host memory MB  = intercept + factor x predicted MB    the upper envelope of the jobs (none above it)

A rule the preflight does not cost (samples, probes, bag-of-words, PPO, the report's) gets Seqera's rule: the
longest time and the largest memory any finished job of the rule (and model) took. With no finished jobs the
calibration holds no fit, and nothing changes. `job_prediction` turns the calibration and the plan's prediction
of a job into seconds and megabytes: the Slurm requests (sizing.py), this page and the benchmark use it.
"""
from __future__ import annotations

import json
import math
import re
import string
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import layout
from .io import markdown_table, write_json, write_text
from .runtimes import read_benchmarks

COSTED = ("extract", "icl", "teacher", "finetune", "instruct")  # the rules whose cells the preflight costs
BYTES_16BIT = 2


# ---------------------------------------------------------------- cells, measurements, predictions


def cell_fields(rule: str) -> list[str]:
    """The wildcards of a rule's cell, in layout.CELLS order."""
    return [field for _, field, _, _ in string.Formatter().parse(layout.CELLS[rule]) if field]


def cell_key(rule: str, values: dict) -> tuple:
    """A job's cell as a key: its wildcards' values as text (a plan holds numbers, Snakemake text)."""
    return tuple(str(values[field]) for field in cell_fields(rule))


def parse_cell(rule: str, cell_path: str) -> dict | None:
    """The wildcards of a job's cell path (`smollm2/tweets/shots0_seed1`: layout.CELLS), or None."""
    if not layout.CELLS[rule]:
        return {} if cell_path == rule else None
    regex = "".join(re.escape(text) + (f"(?P<{field}>[^/]+)" if field else "")
                    for text, field, _, _ in string.Formatter().parse(layout.CELLS[rule]))
    found = re.fullmatch(regex, cell_path)
    return found.groupdict() if found else None


def read_measurements(benchmarks: str | Path) -> list[dict]:
    """Every job of a layout rule with a benchmark file: its rule, cell, the benchmark's wall seconds and peak
    memory, and its own cost record where it wrote one (model jobs)."""
    benchmarks, out = Path(benchmarks), []
    for row in read_benchmarks(benchmarks).itertuples():
        if row.rule not in layout.CELLS:
            continue
        cost_path = benchmarks / f"{row.job}.json"
        cost = json.loads(cost_path.read_text()) if cost_path.is_file() else None
        peak = max([v for v in (row.max_rss_mb, (cost or {}).get("peak_rss_mb")) if v is not None and v == v],
                   default=None)
        out.append({"rule": row.rule, "cell": parse_cell(row.rule, row.job.split("/", 1)[-1]),
                    "wall_s": row.wall_s, "peak_mb": peak, "cost": cost})
    return out


def plan_predictions(plan: dict) -> dict[tuple, dict]:
    """The preflight's prediction of every Snakemake job it costs, by (rule, cell key): an ICL job runs every
    pattern of its cell (their FLOPs add up) after loading its model once."""
    out = {}
    for job in plan.get("jobs", []):
        if job["stage"] not in COSTED:
            continue
        entry = out.setdefault((job["stage"], cell_key(job["stage"], job)), {
            "model": job["model"], "gpus": job["gpus"], "parameters": job["parameters"], "flops": 0.0,
            "memory_mb": 0.0, "load_seconds": 0.0, "compute_seconds": 0.0})
        entry["flops"] += job["flops"]
        entry["compute_seconds"] += job["compute_seconds"] + job.get("communication_seconds", 0.0)  # after loading
        entry["load_seconds"] = max(entry["load_seconds"], job["load_seconds"])
        entry["memory_mb"] = max(entry["memory_mb"], job["memory_gb"] * 1024)
        entry["gpus"] = max(entry["gpus"], job["gpus"])  # an ICL job's patterns: the one spread furthest
    return out


def pilot_cells(plan: dict) -> list[tuple[str, dict]]:
    """The pilot: per (stage, model, method) the cheapest and the most expensive job the preflight costed (by its
    predicted compute), the two ends a fit of a fixed and a per-FLOP cost needs. Ordinary cells of the grid."""
    groups = defaultdict(list)
    for (rule, key), predicted in plan_predictions(plan).items():
        cell = dict(zip(cell_fields(rule), key))
        groups[rule, predicted["model"], cell.get("method")].append((predicted["compute_seconds"], key, cell))
    chosen = {(rule, end[1]): end[2] for (rule, _, _), jobs in groups.items() for end in (min(jobs), max(jobs))}
    return [(rule, cell) for (rule, _), cell in sorted(chosen.items())]


# ---------------------------------------------------------------- the fit


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept >= 0, slope > 0) of y over x: least squares where x varies, else the ratio through 0."""
    through_zero = (0.0, float(y.sum() / max(x.sum(), 1e-12)))
    if len(x) < 2 or x.max() < 1.1 * x.min():
        return through_zero
    slope, intercept = np.polyfit(x, y, 1)
    if slope <= 0:
        return through_zero
    if intercept < 0:
        return 0.0, float((x * y).sum() / (x * x).sum())
    return float(intercept), float(slope)


def fit_group(stage: str, model: str, method: str | None, device: str, pairs: list[tuple[dict, dict]]) -> dict:
    """The cost model's constants for one (stage, model, method, device) from its jobs' (measurement,
    prediction)."""
    costs = [measured["cost"] for measured, _ in pairs]
    compute_intercept, seconds_per_flop = _line(np.array([c["flops"] for c in costs]),
                                                np.array([c["compute_seconds"] for c in costs]))
    weight_bytes = sum(BYTES_16BIT * predicted["parameters"] for _, predicted in pairs)
    startups = [measured["wall_s"] - measured["cost"]["wall_seconds"] for measured, _ in pairs
                if measured["wall_s"] == measured["wall_s"]]  # a benchmark's wall time: NaN where it has none
    predicted_mb = np.array([predicted["memory_mb"] for _, predicted in pairs])
    measured_mb = np.array([measured["peak_mb"] or 0.0 for measured, _ in pairs])
    memory_intercept, memory_factor = _line(predicted_mb, measured_mb)
    memory_intercept += max(0.0, float((measured_mb - memory_intercept - memory_factor * predicted_mb).max()))
    gpu = [c["peak_gpu_mb"] / max(p["memory_mb"], 1e-9) for (_, p), c in zip(pairs, costs) if c.get("peak_gpu_mb")]
    gpus = max(max(c.get("gpus") or p["gpus"], 1) for (_, p), c in zip(pairs, costs))
    return {"stage": stage, "model": model, "method": method, "device": device, "jobs": len(pairs), "gpus": gpus,
            "throughput_flops_per_s": 1 / max(seconds_per_flop, 1e-30), "compute_intercept_s": compute_intercept,
            "load_bytes_per_s": weight_bytes / max(sum(c["load_seconds"] for c in costs), 1e-9),
            "startup_s": max(float(np.median(startups)), 0.0) if startups else 0.0,
            "memory_intercept_mb": memory_intercept, "memory_factor": memory_factor,
            "gpu_memory_factor": max(gpu) if gpu else None}


def envelopes(measurements: list[dict]) -> list[dict]:
    """Seqera's rule, per rule and per (rule, model): the longest time and the largest memory of any job."""
    groups = defaultdict(list)
    for measured in measurements:
        groups[measured["rule"], None].append(measured)
        if (measured["cell"] or {}).get("model"):
            groups[measured["rule"], measured["cell"]["model"]].append(measured)
    return [{"rule": rule, "model": model, "jobs": len(jobs),
             "max_seconds": float(np.nanmax([j["wall_s"] for j in jobs])),
             "max_mb": float(np.nanmax([j["peak_mb"] or 0.0 for j in jobs]))}
            for (rule, model), jobs in sorted(groups.items(), key=str)]


def calibrate(plan: dict, measurements: list[dict]) -> dict:
    """The calibration of a plan on finished jobs: a fit per (stage, model, method, device) where a costed job
    measured its work, and every rule's envelope."""
    predictions, groups = plan_predictions(plan), defaultdict(list)
    for measured in measurements:
        cost, cell = measured["cost"], measured["cell"]
        predicted = predictions.get((measured["rule"], cell_key(measured["rule"], cell))) if cell is not None \
            and measured["rule"] in COSTED else None
        if cost and cost.get("flops") and predicted:
            groups[measured["rule"], cell["model"], cell.get("method"), cost["device"]].append((measured, predicted))
    return {"fits": [fit_group(*key, pairs) for key, pairs in sorted(groups.items(), key=str)],
            "rules": envelopes(measurements), "jobs": len(measurements)}


# ---------------------------------------------------------------- predictions from it


def job_prediction(calibration: dict, rule: str, cell: dict, predicted: dict | None,
                   startup_s: float = 0.0) -> tuple[float | None, float | None, str | None]:
    """(seconds, host MB, source) of a job: `calibrated` from its (stage, model, method) fit and its plan
    prediction (the slowest device where it ran on several), else `measured` (its rule's envelope, and model's
    where it has one), else `preflight` (the plan's load and compute seconds plus startup_s; no host memory: the
    preflight predicts GPU memory), else (None, None, None)."""
    model = cell.get("model")
    fits = [entry for entry in calibration.get("fits", []) if entry["stage"] == rule and entry["model"] == model
            and entry.get("method") == cell.get("method")]
    if fits and predicted:
        return max((fitted_seconds(entry, predicted), fitted_mb(entry, predicted), "calibrated") for entry in fits)
    measured = [entry for entry in calibration.get("rules", []) if entry["rule"] == rule and entry["model"] in
                (model, None)]
    if measured:
        entry = max(measured, key=lambda e: (e["model"] is not None, e["jobs"]))
        return entry["max_seconds"], entry["max_mb"] or None, "measured"
    if predicted:
        return startup_s + preflight_seconds(predicted), None, "preflight"
    return None, None, None


def preflight_seconds(predicted: dict) -> float:
    """A job's seconds as the preflight estimates them, uncalibrated: loading, then computing (and moving data
    between nodes)."""
    return predicted["load_seconds"] + predicted["compute_seconds"]


def fitted_seconds(entry: dict, predicted: dict) -> float:
    return (entry["startup_s"] + BYTES_16BIT * predicted["parameters"] / entry["load_bytes_per_s"] +
            entry["compute_intercept_s"] + predicted["flops"] / entry["throughput_flops_per_s"])


def fitted_mb(entry: dict, predicted: dict) -> float | None:
    """Host memory; None from a fit that measured none (benchmarks/gpu.py's: the GPU's alone)."""
    if entry["memory_factor"] is None:
        return None
    return entry["memory_intercept_mb"] + entry["memory_factor"] * predicted["memory_mb"]


# ---------------------------------------------------------------- the page


def _ratio(a, b) -> float:
    return a / b if a and b else float("nan")


def _median(values) -> str:
    values = [v for v in values if v == v]
    return f"{np.median(values):.2f}" if values else "–"


def calibration_markdown(plan: dict, calibration: dict, measurements: list[dict]) -> str:
    """The page: per stage and model, predicted against measured before and after calibration, the fitted
    throughput and utilisation; the jobs furthest off; the grid's GPU-hours with and without the calibration and
    the cells whose calibrated GPU memory does not fit."""
    predictions, cluster = plan_predictions(plan), plan.get("cluster", {})
    lines = ["# Calibration", "", f"From {calibration['jobs']} finished job(s) (results/benchmarks/) against the "
             f"preflight's predictions (results/plan/preflight.json). Ratios are predicted / measured, medians over "
             f"the jobs; before = the preflight's load and compute seconds, after = this calibration.", ""]
    rows, off = [], []
    for entry in calibration["fits"]:
        pairs = [(m, predictions[m["rule"], cell_key(m["rule"], m["cell"])]) for m in measurements
                 if m["rule"] == entry["stage"] and m["cost"] and m["cost"].get("device") == entry["device"]
                 and (m["cell"] or {}).get("model") == entry["model"] and m["cell"].get("method") == entry["method"]
                 and (m["rule"], cell_key(m["rule"], m["cell"])) in predictions]
        before = [_ratio(preflight_seconds(p), m["wall_s"]) for m, p in pairs]
        after = [_ratio(fitted_seconds(entry, p), m["wall_s"]) for m, p in pairs]
        memory = [_ratio(fitted_mb(entry, p), m["peak_mb"]) for m, p in pairs if entry["memory_factor"] is not None]
        peak = entry["gpus"] * cluster.get("gpu_tflops", 0) * 1e12
        utilisation = f"{entry['throughput_flops_per_s'] / peak:.1%}" if entry["device"] != "cpu" and peak else "–"
        rows.append([" ".join(filter(None, (entry["stage"], entry["method"]))), entry["model"], entry["device"],
                     entry["jobs"], _median(before), _median(after),
                     _median(memory), f"{entry['throughput_flops_per_s'] / 1e12:.3g}", utilisation,
                     f"{entry['load_bytes_per_s'] / 1e9:.2f}", f"{entry['startup_s']:.1f}"])
        off += [(abs(math.log(a)), entry["stage"], m["cell"], a) for (m, _), a in zip(pairs, after) if a == a and a]
    if rows:
        lines += markdown_table(["stage", "model", "device", "jobs", "time before", "time after", "memory after",
                                 "TFLOP/s", "utilisation", "load GB/s", "start-up s"], rows) + [""]
        lines += ["## Furthest off after calibration", ""] + markdown_table(
            ["stage", "cell", "predicted / measured"],
            [[stage, "/".join(map(str, cell.values())), f"{ratio:.2f}"] for _, stage, cell, ratio in
             sorted(off, key=lambda item: -item[0])[:10]]) + [""]
    else:
        lines += ["No job of a costed stage has measured its work yet: every request stays as it was.", ""]
    return "\n".join(lines + grid_lines(plan, calibration, predictions))


def grid_lines(plan: dict, calibration: dict, predictions: dict) -> list[str]:
    """The whole grid's GPU-hours before and after the calibration, and the cells whose calibrated GPU memory is
    more than a GPU holds."""
    gpu_gb = plan.get("cluster", {}).get("gpu_memory_gb", float("inf"))
    before = after = 0.0
    too_big = []
    for (rule, key), predicted in sorted(predictions.items()):
        gpus, cell = max(predicted["gpus"], 1), dict(zip(cell_fields(rule), key))
        before += preflight_seconds(predicted) * gpus / 3600
        seconds, _, _ = job_prediction(calibration, rule, cell, predicted)
        after += (seconds or 0.0) * gpus / 3600
        factors = [e["gpu_memory_factor"] for e in calibration["fits"] if e["stage"] == rule and
                   e["model"] == predicted["model"] and e["method"] == cell.get("method") and e["gpu_memory_factor"]]
        if factors and predicted["memory_mb"] * max(factors) / 1024 > gpu_gb:
            too_big.append(f"{rule} {'/'.join(key)}: {predicted['memory_mb'] * max(factors) / 1024:.0f} GB")
    lines = ["## The grid", "", f"{len(predictions)} costed job(s): {before:.1f} GPU-hours as the preflight "
             f"estimates them, {after:.1f} calibrated (start-up included; a job no fit covers counts as before).", ""]
    if too_big:
        lines += [f"Cells whose calibrated GPU memory exceeds a {gpu_gb} GB GPU:", ""] + [f"- {c}" for c in too_big]
    return lines + [""]


def run_calibration(plan_path: str, benchmarks: str, out_json: str, out_md: str) -> dict:
    """Calibrate the plan on the finished jobs under `benchmarks` and write the calibration and its page."""
    plan = json.loads(Path(plan_path).read_text())
    measurements = read_measurements(benchmarks)
    calibration = calibrate(plan, measurements)
    write_json(calibration, out_json)
    write_text(calibration_markdown(plan, calibration, measurements), out_md)
    return calibration
