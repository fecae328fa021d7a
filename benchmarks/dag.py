"""Benchmark: how long Snakemake takes to plan the workflow, and that a finished run plans nothing.

`snakemake -n` on the full paper grid (config/paper.yaml: 5 OPT models x 4 tasks x k x 10 seeds) and on the
embedded default; then, if the default study has been run (`make`), a dry run over its finished results must
schedule 0 jobs. Target: < 15 s for the paper grid. Writes docs/benchmarks.md.

    python benchmarks/dag.py
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import write_section  # noqa: E402

SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def dry_run(*args, directory: Path = REPO) -> tuple[float, int, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.time()
    proc = subprocess.run([str(SNAKEMAKE), "-n", "-s", str(REPO / "Snakefile"), "--directory", str(directory), *args],
                          capture_output=True, text=True, env=env)
    seconds = time.time() - start
    if proc.returncode:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    total = re.search(r"^total\s+(\d+)$", proc.stdout, re.M)
    return seconds, int(total[1]) if total else 0, proc.stdout


def main() -> None:
    rows = ["| plan | jobs | seconds (best of 3) |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as empty:
        for label, args in (("paper grid, nothing run yet", ["--configfile", str(REPO / "config/paper.yaml")]),
                            ("embedded default, nothing run yet", [])):
            runs = [dry_run(*args, directory=Path(empty)) for _ in range(3)]
            rows.append(f"| {label} | {runs[0][1]} | {min(r[0] for r in runs):.1f} |")
            print(rows[-1], flush=True)
    if (REPO / "results/tables/all.parquet").exists():
        runs = [dry_run() for _ in range(3)]
        rows.append(f"| embedded default after `make` (no-op rerun) | {runs[0][1]} | {min(r[0] for r in runs):.1f} |")
        print(rows[-1], flush=True)
    section = "\n".join(["## dag (benchmarks/dag.py)", "",
                         f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPU cores). "
                         "`snakemake -n` wall time including Python start-up. Target: < 15 s for the paper grid; "
                         "0 jobs when nothing changed.", "", *rows, ""])
    write_section(REPO / "docs" / "benchmarks.md", "dag", section)


if __name__ == "__main__":
    main()
