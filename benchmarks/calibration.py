"""How well each job's Slurm request fits what it used: calibrate on the first seed's finished jobs, predict the
second seed's, and compare, per rule, three ways to size a request side by side:

- static: today's per-rule constants (what the rules ask for with no plan and no calibration);
- Seqera: Seqera Platform's pipeline optimisation, the largest time and memory any calibration job of the rule
  (and model) used;
- lmadapt: each job's own calibrated prediction (lmadapt/calibration.py) times requests.margin (lmadapt/sizing.py).

Reported per rule: the median and 95th-percentile fold error of predicted against measured wall time and peak
memory (a fold error is max(p/m, m/p): 1 is exact), the share of jobs whose first request covered them, and the
total requested against the total used. Reads a finished run (the default study, or a rehearsal slice):

    python benchmarks/calibration.py --workdir . --config config/config.yaml --name default
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import REPO, write_section
from lmadapt import layout
from lmadapt.calibration import calibrate, cell_key, envelopes, job_prediction, plan_predictions, read_measurements
from lmadapt.checks import load_config


def static_requests(config_path: Path) -> dict[tuple, tuple[int, int]]:
    """(rule, cell key) -> (runtime minutes, mem_mb) as the rules ask with no plan and no calibration: a dry run of
    every job of the config in an empty working directory."""
    with tempfile.TemporaryDirectory() as empty:
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                               str(config_path.resolve()), "--directory", empty, "-n", "--forceall", "--cores", "2"],
                              capture_output=True, text=True, check=True)
    requests = {}
    for block in re.split(r"(?m)^(?=\s*(?:local)?rule \w+:$)", proc.stdout):
        rule = re.search(r"^\s*(?:local)?rule (\w+):", block, re.M)
        resources = re.search(r"resources: (.*)", block)
        if not rule or not resources or rule[1] not in layout.CELLS:
            continue
        wildcards = re.search(r"wildcards: (.*)", block)
        cell = dict(item.split("=", 1) for item in wildcards[1].split(", ")) if wildcards else {}
        values = dict(item.split("=", 1) for item in resources[1].split(", "))
        if "runtime" in values and "mem_mb" in values:
            requests[rule[1], cell_key(rule[1], cell)] = (int(values["runtime"]), int(values["mem_mb"]))
    return requests


def seed_of(cell: dict) -> int | None:
    """The data seed a job's cell belongs to: its seed, its sample's (train_k8_seed2, demos_seed2) or its
    prompt's (fewshot_seed2); None for what every seed shares (the test sample, zero-shot ICL runs once)."""
    if "seed" in cell:
        return int(cell["seed"])
    if "sample" in cell and layout.SampleName.parse(cell["sample"]).seed is not None:
        return layout.SampleName.parse(cell["sample"]).seed
    return layout.prefix_seed(cell["prompt"]) if "prompt" in cell else None


def compare(workdir: Path, config_path: Path) -> tuple[str, dict]:
    config = load_config(config_path)
    margin, settings = config["requests"]["margin"], config["requests"]
    plan = json.loads((workdir / layout.PREFLIGHT_JSON).read_text())
    predictions = plan_predictions(plan)
    measured = [m for m in read_measurements(workdir / layout.BENCHMARKS) if m["cell"] is not None
                and m["wall_s"] == m["wall_s"]]
    second = config["seeds"][1]
    predicted_jobs = [m for m in measured if seed_of(m["cell"]) == second]
    calibration_jobs = [m for m in measured if seed_of(m["cell"]) != second]
    calibration = calibrate(plan, calibration_jobs)
    seqera = {(e["rule"], e["model"]): e for e in envelopes(calibration_jobs)}
    static = static_requests(config_path)
    rows = defaultdict(lambda: defaultdict(list))
    for m in predicted_jobs:
        rule, cell = m["rule"], m["cell"]
        key = cell_key(rule, cell)
        if (rule, key) not in static:
            continue
        used_s, used_mb = m["wall_s"], m["peak_mb"] or 0.0
        seconds, megabytes, _ = job_prediction(calibration, rule, cell, predictions.get((rule, key)),
                                               settings["startup_seconds"])
        envelope = seqera.get((rule, cell.get("model"))) or seqera.get((rule, None))
        static_min, static_mb = static[rule, key]
        ours_min = max(math.ceil(seconds * margin / 60), settings["min_runtime"]) if seconds else static_min
        ours_mb = max(math.ceil(megabytes * margin), settings["min_mem_mb"]) if megabytes else static_mb
        row = rows[rule]
        row["used"].append((used_s, used_mb))
        row["static"].append((static_min * 60, static_mb, None, None))
        row["seqera"].append((math.ceil(envelope["max_seconds"] / 60) * 60, envelope["max_mb"], envelope["max_seconds"],
                              envelope["max_mb"]) if envelope else (static_min * 60, static_mb, None, None))
        row["lmadapt"].append((ours_min * 60, ours_mb, seconds, megabytes))
    return table(rows), rows


def fold(predicted, used) -> float:
    return max(predicted / used, used / predicted) if predicted and used else float("nan")


WAYS = ("static", "seqera", "lmadapt")


def summary(used: list[tuple], asked: list[tuple]) -> list[str]:
    """The table's cells for one way on a set of jobs: fold errors of time and memory, share within the first
    request, requested against used."""
    used, requested = np.array(used), np.array([(s, mb) for s, mb, _, _ in asked])
    time = [fold(p, u) for (_, _, p, _), (u, _) in zip(asked, used) if p]
    memory = [fold(p, u) for (_, _, _, p), (_, u) in zip(asked, used) if p]
    within = np.mean((requested[:, 0] >= used[:, 0]) & (requested[:, 1] >= used[:, 1]))
    minutes = np.ceil(used[:, 0] / 60) * 60  # the least a job can ask Slurm for: whole minutes
    return [_errors(time), _errors(memory), f"{within:.0%}", f"{requested[:, 0].sum() / used[:, 0].sum():.1f}x",
            f"{requested[:, 0].sum() / minutes.sum():.1f}x", f"{requested[:, 1].sum() / max(used[:, 1].sum(), 1):.1f}x"]


def table(rows: dict) -> str:
    header = ["rule", "jobs", "way", "time fold error: median / p95", "memory fold error: median / p95",
              "within first request", "requested / used time", "… / used in whole minutes", "requested / used memory"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rule, row in sorted(rows.items()):
        lines += [f"| {rule} | {len(row['used'])} | {way} | " + " | ".join(summary(row["used"], row[way])) + " |"
                  for way in WAYS]
    everything = {key: [item for row in rows.values() for item in row[key]] for key in ("used",) + WAYS}
    lines += [f"| **all** | {len(everything['used'])} | {way} | " + " | ".join(
        summary(everything["used"], everything[way])) + " |" for way in WAYS]
    return "\n".join(lines)


def _errors(folds: list[float]) -> str:
    folds = [f for f in folds if f == f]
    return f"{np.median(folds):.2f} / {np.percentile(folds, 95):.2f}" if folds else "–"


def verdict(rows: dict) -> str:
    """The issue's targets on every predicted job, lmadapt's way: median error <= 25%, 95th percentile within
    2x, >= 98% within the first request, requested / used <= 2x."""
    used = [u for row in rows.values() for u in row["used"]]
    asked = [a for row in rows.values() for a in row["lmadapt"]]
    time = [fold(p, u) for (_, _, p, _), (u, _) in zip(asked, used) if p]
    memory = [fold(p, u) for (_, _, _, p), (_, u) in zip(asked, used) if p]
    within = np.mean([s >= u_s and mb >= u_mb for (s, mb, _, _), (u_s, u_mb) in zip(asked, used)])
    requested = np.array([(s, mb) for s, mb, _, _ in asked])
    spent = np.array(used)
    checks = [("median time error <= 25%", np.median(time) <= 1.25),
              ("95th percentile of time within 2x", np.percentile(time, 95) <= 2),
              ("median memory error <= 25%", np.median(memory) <= 1.25),
              ("95th percentile of memory within 2x", np.percentile(memory, 95) <= 2),
              (">= 98% of jobs within their first request", within >= 0.98),
              ("requested / used time <= 2x", requested[:, 0].sum() / spent[:, 0].sum() <= 2),
              ("requested / used memory <= 2x", requested[:, 1].sum() / spent[:, 1].sum() <= 2)]
    return "; ".join(f"{name}: {'met' if ok else 'missed'}" for name, ok in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."))
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--name", default="default", help="which run: default or rehearsal (the docs' section)")
    parser.add_argument("--note", default="", help="a paragraph under the table (what explains a missed target)")
    args = parser.parse_args()
    text, rows = compare(args.workdir, args.config)
    section = (f"## Slurm requests against use: {args.name} (benchmarks/calibration.py)\n\nCalibrated on the "
               f"first seed's finished jobs (and what every seed shares), predicted for the second seed's; fold error "
               f"= max(predicted / used, used / predicted); a request covers a job when both its runtime and its "
               f"memory do. static = the rules' constants, seqera = the largest of the rule's (and model's) "
               f"calibration jobs, lmadapt = each job's calibrated prediction x requests.margin "
               f"(runtimes in whole minutes, as Slurm takes them).\n\n{text}\n\n"
               f"Targets (lmadapt, all jobs): {verdict(rows)}."
               + (f"\n\n{args.note}" if args.note else ""))
    print(section)
    write_section(REPO / "docs/benchmarks.md", f"calibration-{args.name}", section)


if __name__ == "__main__":
    main()
