"""Each rule's runtime and memory, from the `benchmark:` file Snakemake writes for every job.

A file is `results/benchmarks/<rule>/<the job's wildcards>.tsv`: a header and one row per run, with wall seconds
(`s`), peak resident memory in MB (`max_rss`) and CPU seconds (`cpu_time`); memory and CPU are `NA` when a job
ended before Snakemake's first sample. Jobs that ran before their rule had a `benchmark:` have no file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import UnreadableFile, markdown_table, write_text

COLUMNS = {"s": "wall_s", "max_rss": "max_rss_mb", "cpu_time": "cpu_s"}


def read_benchmarks(folder: str | Path) -> pd.DataFrame:
    """One row per job: rule (the first folder under `folder`), job (the rest of the path), wall_s, max_rss_mb,
    cpu_s. Repeated runs of a job (`repeat()`) count by their mean wall and CPU time and their peak memory. Read
    as plain text: the paper grid has thousands of these small files."""
    folder = Path(folder)
    rows = []
    for path in sorted(folder.rglob("*.tsv")):
        relative = path.relative_to(folder)
        try:
            header, *lines = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
        except (ValueError, UnicodeDecodeError) as e:
            raise UnreadableFile(f"{path}: not a Snakemake benchmark file ({e})") from None
        missing = [column for column in COLUMNS if column not in header]
        if missing or not lines:
            raise UnreadableFile(f"{path}: not a Snakemake benchmark file (no {', '.join(missing) or 'rows'})")
        values = {column: _numbers(line[header.index(column)] for line in lines) for column in COLUMNS}
        rows.append({"rule": relative.parts[0], "job": str(relative.with_suffix("")),
                     "wall_s": _summary(values["s"], np.mean), "max_rss_mb": _summary(values["max_rss"], max),
                     "cpu_s": _summary(values["cpu_time"], np.mean)})
    return pd.DataFrame(rows, columns=["rule", "job", *COLUMNS.values()])


def _numbers(texts) -> list[float]:
    """The measured values (NA or -: a job that ended before Snakemake measured it, left out)."""
    return [float(text) for text in texts if text not in ("NA", "-", "")]


def _summary(values: list[float], how) -> float:
    return float(how(values)) if values else float("nan")


def summarise(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, median and longest wall time, total wall and CPU hours, peak memory of any job; the rules
    that took longest in total first."""
    grouped = jobs.groupby("rule")
    summary = pd.DataFrame({
        "jobs": grouped.size(),
        "median_s": grouped["wall_s"].median(),
        "max_s": grouped["wall_s"].max(),
        "wall_h": grouped["wall_s"].sum() / 3600,
        "cpu_h": grouped["cpu_s"].sum(min_count=1) / 3600,
        "peak_mb": grouped["max_rss_mb"].max(),
        "unsampled": grouped["max_rss_mb"].apply(lambda column: int(column.isna().sum())),
    })
    return summary.sort_values("wall_h", ascending=False)


def _number(value, digits: int) -> str:
    return "–" if pd.isna(value) else f"{value:,.{digits}f}"


def runtimes_markdown(summary: pd.DataFrame, folder: str | Path) -> str:
    lines = ["# Runtime and memory per rule", ""]
    if summary.empty:
        return "\n".join(lines + [f"No benchmark files under {folder} yet.", ""])
    jobs = int(summary["jobs"].sum())
    lines += [f"From the benchmark files of {jobs} job{'s' * (jobs != 1)} under {folder} (Snakemake `benchmark:`; "
              "wall time of the job's command, peak resident memory of its processes). Jobs that ran before "
              "their rule had a benchmark file are not counted. Memory: the peak of any one job, to size "
              "`mem_mb`; `unsampled`: jobs that ended before Snakemake measured their memory.", ""]
    lines += markdown_table(
        ["rule", "jobs", "median s", "longest s", "wall hours", "CPU hours", "peak MB", "unsampled"],
        [[rule, int(row.jobs), _number(row.median_s, 1), _number(row.max_s, 1), _number(row.wall_h, 3),
          _number(row.cpu_h, 3), _number(row.peak_mb, 0), int(row.unsampled)] for rule, row in summary.iterrows()])
    return "\n".join(lines + [""])


def write_runtimes(folder: str | Path, out: str | Path) -> pd.DataFrame:
    summary = summarise(read_benchmarks(folder))  # a folder not there yet: no jobs
    write_text(runtimes_markdown(summary, folder), out)
    return summary
