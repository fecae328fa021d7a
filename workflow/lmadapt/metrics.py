"""Metrics records with the fixed schema every stage writes (DESIGN: contracts), and their provenance.

A metrics file is `{"records": [record, ...]}`; a record is one cell x evaluation split: its keys (task, model,
method, layer, prompt, k, examples, seed, split), n, accuracy, macro-F1, per-class precision/recall, the confusion
matrix,
the distribution of predicted labels, the majority-class baseline, a `degenerate` flag, cost and provenance.
A cell that could not run is a record with `skipped` set to its reason and no scores.
"""
from __future__ import annotations

import functools
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, layout
from .config import fingerprint
from .io import write_json

# k: training examples per class; examples: labeled examples the method used in total (training rows plus
# demonstrations), the unit in which tables and figures compare ICL, probes and fine-tuning.
KEYS = ("task", "model", "method", "layer", "prompt", "k", "examples", "seed", "split")
DEGENERATE_SHARE = 0.95  # one label predicted for at least this share of the examples


def classification_record(keys: dict, labels: list[str], y_true, y_pred, groups: dict | None = None) -> dict:
    """Scores of one cell on one split. groups: {column: values per example} for per-group accuracy."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    n, n_labels = len(y_true), len(labels)
    confusion = np.zeros((n_labels, n_labels), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class, f1s = {}, []
    for i, name in enumerate(labels):
        tp, predicted, actual = confusion[i, i], confusion[:, i].sum(), confusion[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(actual)}
        f1s.append(f1)
    predicted_share = confusion.sum(0) / max(n, 1)
    true_share = confusion.sum(1) / max(n, 1)
    record = {key: keys.get(key) for key in KEYS}
    record.update(keys)
    record.update({
        "n": int(n),
        "accuracy": float((y_true == y_pred).mean()) if n else None,
        "macro_f1": float(np.mean(f1s)),
        "per_class": per_class,
        "labels": list(labels),
        "confusion": confusion.tolist(),
        "predicted_distribution": {name: float(s) for name, s in zip(labels, predicted_share)},
        "majority_baseline": float(true_share.max()) if n else None,
        "degenerate": bool(n and predicted_share.max() >= DEGENERATE_SHARE),
        "skipped": None,
    })
    if groups:
        record["by_group"] = {
            column: {str(g): {"n": int((values == g).sum()), "accuracy": float((y_true[values == g] ==
                                                                                y_pred[values == g]).mean())}
                     for g in sorted(set(values))}
            for column, values in ((c, np.asarray(v)) for c, v in groups.items())}
    return record


def group_columns(sample, ids) -> dict:
    """Per-example group columns of an evaluation sample (HANS: heuristic, subcase), aligned to `ids`."""
    columns = [c for c in ("heuristic", "subcase") if c in sample.columns]
    if not columns:
        return {}
    indexed = sample.set_index("id").loc[list(ids)]
    return {c: indexed[c].to_numpy() for c in columns}


def skipped_record(keys: dict, reason: str, **counts) -> dict:
    record = {key: keys.get(key) for key in KEYS}
    record.update(keys)
    record.update({"n": 0, "accuracy": None, "macro_f1": None, "degenerate": False,
                   "skipped": dict(reason=reason, **counts)})
    return record


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the workflow (with -dirty), or the package version outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", str(here.parent)],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"lmadapt-{__version__}"


def provenance(settings: dict, model_revision: str | None, data_fingerprints: list[str]) -> dict:
    return {"config_hash": fingerprint(settings), "code_version": code_version(),
            "model_revision": model_revision, "data_fingerprint": fingerprint(sorted(data_fingerprints))}


def _cuda():
    """torch.cuda where this job has imported torch and has a GPU, else None: a job that never imported torch
    (sample, bow, aggregate) used no GPU, and must not pay torch's import to say so."""
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None


def peak_gpu_bytes(cuda) -> int:
    """The largest peak of this process on any GPU it sees: a spread model's largest share, in the preflight's
    unit (memory per GPU); a training rank allocates on its own GPU only."""
    return max(cuda.max_memory_allocated(index) for index in range(cuda.device_count()))


class Cost:
    """Wall seconds, device and peak memory of a stage, measured from construction to `as_dict()`, split as the
    preflight's cost model splits a job: loading (until a model job calls `loaded()`) and computing (the rest).
    A model job adds its work in the preflight's units (costs.py: tokens, FLOPs) and the batch it ran with."""

    def __init__(self):
        self.start = time.time()
        self.load_end = None
        if cuda := _cuda():
            for index in range(cuda.device_count()):
                cuda.reset_peak_memory_stats(index)

    def loaded(self) -> None:
        """The model's weights are in memory: what follows is computing."""
        self.load_end = time.time()

    def as_dict(self, **extra) -> dict:
        cuda, now = _cuda(), time.time()
        load = (self.load_end or self.start) - self.start
        out = {"wall_seconds": round(now - self.start, 3), "load_seconds": round(load, 3),
               "compute_seconds": round(now - self.start - load, 3),
               "device": cuda.get_device_name() if cuda else "cpu",
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "peak_gpu_mb": round(peak_gpu_bytes(cuda) / 2**20, 1) if cuda else None}
        out.update(extra)
        return out


def write_cost(rule: str, output, cost: dict) -> None:
    """A model job's cost (Cost.as_dict with its work) where the calibration reads every job's: beside its
    benchmark file (layout.cost_record); a job run by hand outside the layout writes none."""
    path = layout.cost_record(rule, output)
    if path is not None:
        write_json(dict(cost, rule=rule), path)


def finish(records: list[dict], cost: dict, prov: dict) -> dict:
    """The metrics file: every record carries the job's cost and provenance."""
    for record in records:
        record["cost"] = cost
        record["provenance"] = prov
    return {"records": records}
