"""What the pilot costs on the paper grid: its share of the grid's GPU-hours, from the plan of
benchmarks/preflight.py (the rehearsal's token counts with every model's real size and the paper's layouts: each
job's load, compute and inter-node seconds as the preflight estimates them, under its `preflight` assumptions).
The pilot's cells are calibration.pilot_cells of the same plan.

    python benchmarks/preflight.py
    python benchmarks/pilot.py
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from common import REPO, write_section
from lmadapt.calibration import cell_key, pilot_cells, plan_predictions, preflight_seconds


def share(plan: dict) -> tuple[str, float]:
    pilot = {(rule, cell_key(rule, cell)) for rule, cell in pilot_cells(plan)}
    hours = defaultdict(lambda: [0.0, 0.0])  # (stage, model) -> [grid, pilot]
    for (rule, key), predicted in plan_predictions(plan).items():
        cost = preflight_seconds(predicted) * max(predicted["gpus"], 1) / 3600
        hours[rule, predicted["model"]][0] += cost
        hours[rule, predicted["model"]][1] += cost if (rule, key) in pilot else 0.0
    stages = defaultdict(lambda: [0.0, 0.0, 0])
    for (stage, _), (g, p) in hours.items():
        stages[stage][0] += g
        stages[stage][1] += p
        stages[stage][2] += 1
    grid, piloted = sum(h[0] for h in hours.values()), sum(h[1] for h in hours.values())
    lines = ["| stage | models | grid GPU-hours | pilot GPU-hours | pilot share |", "|---|---|---|---|---|"]
    lines += [f"| {stage} | {n} | {g:.1f} | {p:.2f} | {p / g:.1%} |" for stage, (g, p, n) in sorted(stages.items())]
    lines.append(f"| **all** | | {grid:.1f} | {piloted:.1f} | **{piloted / grid:.1%}** |")
    return "\n".join(lines), piloted / grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=REPO / "resources/benchmarks/preflight/plan.json")
    args = parser.parse_args()
    plan = json.loads(args.plan.read_text())
    text, _ = share(plan)
    print(text)
    write_section(REPO / "docs/benchmarks.md", "pilot", "## The pilot's share of the paper grid "
                  f"(benchmarks/pilot.py)\n\nFrom {args.plan.name} of a rehearsal of config/paper.yaml with its 10 "
                  f"seeds (the rehearsal's token counts, each model's real parameter count and the paper's layouts, "
                  f"OPT-30B's training on two nodes; priced under the plan's `preflight` assumptions):\n\n"
                  f"{text}\n\nThe pilot runs the costliest cell of each (stage, "
                  f"model, method) (k = 128, the long prompts) and the cheapest; instruction tuning is one job per "
                  f"derived model, so the pilot runs all of it (the grid needs it anyway). Nothing the pilot runs is "
                  f"run again.")


if __name__ == "__main__":
    main()
