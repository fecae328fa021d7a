"""Benchmark: how long a job that uses no model takes to start, now that such jobs do not import torch.

Side by side in one run, each a fresh process, best of --repeats: `lmadapt sample --help` as it starts now, and the
same with torch imported first (what every such job paid while the CLI imported torch through the model loader).
The paper grid's jobs that start this way are counted from Snakemake's own plan of config/paper.yaml; a probe job
imports torch later, only to train its MLP probe, so probe jobs count only where no MLP probe runs.
Writes a section of docs/benchmarks.md.

    python benchmarks/startup.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import write_section  # noqa: E402

BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
TORCH_FREE_RULES = ("sample", "bow", "aggregate", "runtimes", "resolved_config", "derived_summary")


def best_seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=ENV)
        times.append(time.perf_counter() - start)
    return min(times)


def paper_jobs() -> dict[str, int]:
    """Jobs per rule of the paper grid, from `snakemake -n`."""
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.run([str(BIN / "snakemake"), "-n", "-s", str(REPO / "Snakefile"), "--directory", workdir,
                               "--configfile", str(REPO / "config/paper.yaml"), "--cores", "1"],
                              capture_output=True, text=True, env=ENV, check=True)
    stats = proc.stdout.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m[1] != "total"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    verb = [str(BIN / "lmadapt"), "sample", "--help"]
    with_torch = [sys.executable, "-c", "import sys, torch; from lmadapt.cli import main; sys.exit(main(sys.argv[1:]))",
                  "sample", "--help"]
    now, before = best_seconds(verb, args.repeats), best_seconds(with_torch, args.repeats)
    jobs = paper_jobs()
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    mlp_probes = "mlp" in (paper.get("probe", {}).get("probes") or ["logreg", "mlp"])
    counted = {rule: jobs.get(rule, 0) for rule in TORCH_FREE_RULES + (() if mlp_probes else ("probe",))}
    total = sum(counted.values())
    rows = " + ".join(f"{n} {rule}" for rule, n in counted.items() if n)
    text = (f"## job start-up without torch (benchmarks/startup.py)\n\n"
            f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPU cores), best of "
            f"{args.repeats} fresh processes each, side by side. Baseline = the same command with torch imported "
            f"first, as every job paid while `lmadapt.cli` imported torch through the model loader.\n\n"
            f"| command | with torch imported (before) | lmadapt now | saved per job | ratio |\n"
            f"|---|---|---|---|---|\n"
            f"| `lmadapt sample --help` | {before:.2f} s | {now:.2f} s | {before - now:.2f} s | "
            f"{before / now:.1f}x |\n\n"
            f"Jobs of the paper grid that start this way: {total} ({rows}), {total * (before - now) / 60:.0f} "
            f"CPU-minutes of start-up saved per full run. Probe jobs ({jobs.get('probe', 0)}) still import torch "
            f"{'to train the MLP probe the grid asks for' if mlp_probes else 'never: the grid runs no MLP probe'}.\n")
    write_section(REPO / "docs/benchmarks.md", "startup", text)
    print(text)


if __name__ == "__main__":
    main()
