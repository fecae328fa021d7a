"""Where the grid stands (`lmadapt status`, and results/plan/status.md in the report): per stage and model, the
jobs finished, failed and not yet run, the hours they took against the hours predicted, and each failed job's
log's last lines. Read from the files alone (every job's output, its log, its benchmark file and cost record,
the plan and the calibration), so it answers in seconds on the paper grid and whether or not Snakemake runs.

A job is finished when its output is there, failed when its log is there but its output is not (it ran and
stopped: an error, a timeout, a kill; a job running right now reads as failed too), not yet run otherwise. Hours
are wall hours times the job's GPUs (a CPU job counts one): GPU-hours for the GPU jobs.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from . import layout
from .calibration import cell_key, job_prediction, plan_predictions, read_measurements
from .io import markdown_table
from .jobs import Jobs

LOG_LINES = 5  # of a failed job's log, in the report
SHOWN_FAILURES = 20


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def grid_jobs(config: dict, root: str | Path = ".") -> list[dict]:
    """Every job of the grid with its state, its hours spent (finished or failed) and predicted."""
    root, grid = Path(root), Jobs(config)
    plan = plan_predictions(_read_json(root / layout.PREFLIGHT_JSON))
    calibration = _read_json(root / layout.CALIBRATION_JSON) or _read_json(root / layout.PILOT_CALIBRATION_JSON)
    spent = {(m["rule"], cell_key(m["rule"], m["cell"])): m for m in read_measurements(root / layout.BENCHMARKS)
             if m["cell"] is not None}
    jobs = []
    for rule, rule_cells in grid.cells().items():
        for cell in rule_cells:
            key, model = cell_key(rule, cell), cell.get("model")
            gpus = max(grid.gpus(rule, model), 1) if model else 1
            log = root / layout.log(rule).format(**cell)
            state = "finished" if (root / layout.OUTPUTS[rule].format(**cell)).exists() else \
                "failed" if log.exists() else "not yet run"
            seconds, _, _ = job_prediction(calibration, rule, cell, plan.get((rule, key)))
            measured = spent.get((rule, key))
            jobs.append({"rule": rule, "model": model or "–", "cell": "/".join(key) or rule, "state": state,
                         "log": log, "spent_h": measured["wall_s"] * gpus / 3600 if measured else 0.0,
                         "predicted_h": seconds * gpus / 3600 if seconds else None})
    return jobs


def status_markdown(jobs: list[dict]) -> str:
    """The table per stage and model, and the failed jobs with their logs' last lines."""
    rows = defaultdict(lambda: {"finished": 0, "failed": 0, "not yet run": 0, "spent": 0.0, "predicted": 0.0,
                                "unpredicted": 0})
    for job in jobs:
        row = rows[job["rule"], job["model"]]
        row[job["state"]] += 1
        row["spent"] += job["spent_h"]
        row["predicted"] += job["predicted_h"] or 0.0
        row["unpredicted"] += job["predicted_h"] is None
    counts = {state: sum(job["state"] == state for job in jobs) for state in ("finished", "failed", "not yet run")}
    lines = ["# Status", "", f"{len(jobs)} jobs: {counts['finished']} finished, {counts['failed']} failed, "
             f"{counts['not yet run']} not yet run. Hours: wall hours x the job's GPUs (a CPU job counts one); "
             f"predicted: the calibration, else the preflight (a job neither covers is counted in `unpredicted`).", ""]
    lines += markdown_table(["stage", "model", "finished", "failed", "not yet run", "hours spent", "hours predicted",
                             "unpredicted"],
                            [[rule, model, r["finished"], r["failed"], r["not yet run"], f"{r['spent']:.2f}",
                              f"{r['predicted']:.2f}", r["unpredicted"]] for (rule, model), r in sorted(rows.items())])
    failed = [job for job in jobs if job["state"] == "failed"]
    if failed:
        lines += ["", f"## Failed ({len(failed)}; the first {min(len(failed), SHOWN_FAILURES)})", ""]
        for job in failed[:SHOWN_FAILURES]:
            tail = job["log"].read_text(errors="replace").splitlines()[-LOG_LINES:]
            lines += [f"- {job['rule']} {job['cell']}: {job['log']}", "", "  ```", *(f"  {t}" for t in tail),
                      "  ```", ""]
    return "\n".join(lines + [""])
