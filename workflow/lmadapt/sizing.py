"""What each job asks Slurm for: its runtime and memory from its own predicted cost, never a constant per rule.

A job's prediction (calibration.job_prediction) comes from the calibration of the finished jobs
(results/plan/calibration.json, or the pilot's until the grid's exists), else from the preflight's estimate
(results/plan/preflight.json: load and compute seconds; host memory only once measured), else the rule's static
value; the request is the prediction times `requests.margin` (at least `min_runtime` minutes and `min_mem_mb`),
and it grows with the attempt. Requests are resources: Snakemake never reruns a job for them, so a new calibration
or margin changes how the remaining jobs queue, not what any job computes. The files are read when first needed
and again when they change: the preflight and the calibration write them while a run goes on.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import layout
from .calibration import cell_key, job_prediction, plan_predictions


class Requests:
    """The Slurm requests of one config's jobs, from the plan and the calibration under `root`."""

    def __init__(self, config: dict, root: str | Path = "."):
        self.settings = config["requests"]
        self.root = Path(root)
        self._read: dict[str, tuple] = {}

    def _json(self, path: str, derive=lambda document: document):
        """derive(the JSON at root/path), read again when the file changes; {} while it is not there."""
        try:
            stamp = (self.root / path).stat().st_mtime_ns
        except FileNotFoundError:
            return derive({})
        if path not in self._read or self._read[path][0] != stamp:
            self._read[path] = (stamp, derive(json.loads((self.root / path).read_text())))
        return self._read[path][1]

    def planned(self, rule: str, cell: dict) -> dict | None:
        """The preflight's prediction of a job (calibration.plan_predictions), or None."""
        return self._json(layout.PREFLIGHT_JSON, plan_predictions).get((rule, cell_key(rule, cell)))

    def prediction(self, rule: str, cell: dict) -> tuple[float | None, float | None, str | None]:
        """(seconds, host MB, source) of a job (calibration.job_prediction)."""
        calibration = self._json(layout.CALIBRATION_JSON) or self._json(layout.PILOT_CALIBRATION_JSON)
        return job_prediction(calibration, rule, cell, self.planned(rule, cell), self.settings["startup_seconds"])

    def gpus(self, rule: str, cell: dict, static: int) -> int:
        """An inference job's GPUs: as many as the preflight spread its model over (more than one where one GPU
        cannot hold it: plan.Plan.inference_job), else `static`."""
        predicted = self.planned(rule, cell)
        return max(predicted["gpus"], static) if predicted else static

    def runtime(self, rule: str, cell: dict, attempt: int, static: int) -> int:
        """Minutes: the predicted seconds times the margin (at least min_runtime), else `static`; x attempt."""
        seconds, _, _ = self.prediction(rule, cell)
        if seconds is None:
            return static * attempt
        return max(math.ceil(seconds * self.settings["margin"] / 60), self.settings["min_runtime"]) * attempt

    def mem_mb(self, rule: str, cell: dict, attempt: int, static: int) -> int:
        """Megabytes: the predicted host memory times the margin (at least min_mem_mb), else `static`; x attempt."""
        _, megabytes, _ = self.prediction(rule, cell)
        if megabytes is None:
            return static * attempt
        return max(math.ceil(megabytes * self.settings["margin"]), self.settings["min_mem_mb"]) * attempt
