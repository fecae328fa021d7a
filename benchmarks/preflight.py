"""Benchmark: the preflight on the full paper grid, and the grid's estimated GPU-hours.

The rehearsal of config/paper.yaml with all 10 seeds and all 30,000 HANS rows is fetched and sampled (hub-shaped
data, the grid's exact cells); then each prepared model folder gets its hub model's sizes in its config.json
(lmadapt.rehearsal.HUB_MODEL_SIZES) and its model entry the paper's GPUs and nodes (a rehearsal runs on one
machine: it makes a model's nodes one node of as many processes), so that the cost estimate is the real grid's
while prompt lengths come from the rehearsal's tokenizer (about 1.6 tokens a word, a little above OPT's BPE on
English). Times `lmadapt preflight` (best of 3, after fetch and sample, as on a login node). Target: < 30 s. Writes
docs/benchmarks.md.

    python benchmarks/preflight.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import write_section  # noqa: E402

BIN = Path(sys.executable).parent
WORK = REPO / "resources" / "benchmarks" / "preflight"


def main() -> None:
    import yaml

    from lmadapt.checks import load_config
    from lmadapt.grid import root_model
    from lmadapt.rehearsal import HUB_MODEL_SIZES

    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    subprocess.run([str(BIN / "lmadapt"), "rehearsal", "--paper", str(REPO / "config/paper.yaml"), "--out",
                    str(WORK), "--seeds", "10", "--hans-rows", "0"], check=True, env=env)
    config = WORK / "config.yaml"
    samples = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(WORK),
                              "--configfile", str(config), "--cores", "2", "--until", "sample", "fetch_model",
                              "fetch_corpus"],
                             env=env, capture_output=True, text=True)
    if samples.returncode:
        raise RuntimeError(samples.stdout[-3000:] + samples.stderr[-3000:])
    paper, rehearsed = (yaml.safe_load(path.read_text()) for path in (REPO / "config/paper.yaml", config))
    real = {name: HUB_MODEL_SIZES[spec["id"]] for name, spec in paper["models"].items()
            if spec.get("id") in HUB_MODEL_SIZES}
    for name, sizes in real.items():
        path = WORK / "resources/models" / name / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | sizes, indent=2))
    for name, spec in rehearsed["models"].items():
        spec.update({key: paper["models"][name][key] for key in ("gpus", "nodes") if key in paper["models"][name]})
    config = WORK / "config-paper-layout.yaml"
    config.write_text(yaml.safe_dump(rehearsed, sort_keys=False))
    runs = []
    for _ in range(3):
        start = time.time()
        subprocess.run([str(BIN / "lmadapt"), "preflight", "--config", str(config), "--samples",
                        str(WORK / "results/samples"), "--models", str(WORK / "resources/models"), "--out-json",
                        str(WORK / "plan.json"), "--out-md", str(WORK / "plan.md")], check=True, env=env,
                       capture_output=True)
        runs.append(time.time() - start)
    plan = json.loads((WORK / "plan.json").read_text())
    by = defaultdict(float)
    for job in plan["jobs"]:
        by[job["model"], job["stage"]] += job["gpu_hours"]
    grid = load_config(config)  # a derived model (instruction-tuned OPT) is costed by its root's sizes
    models = sorted({m for m, _ in by}, key=lambda m: (list(real).index(root_model(grid, m)), m))
    stages = ["extract", "icl", "teacher", "finetune", "instruct"]
    rows = ["| model | " + " | ".join(stages) + " | total |", "|---|" + "---|" * (len(stages) + 1)]
    for model in models:
        values = [by[model, stage] for stage in stages]
        rows.append(f"| {model} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {sum(values):.1f} |")
    training = defaultdict(lambda: {"gpus": 0, "nodes": 1, "memory": 0.0, "hours": 0.0, "link": 0.0, "fits": True})
    for job in plan["jobs"]:
        if job["stage"] in ("finetune", "instruct") and root_model(grid, job["model"]).startswith("opt_"):
            row = training[job["model"], job["stage"]]
            row.update(gpus=job["gpus"], nodes=job["nodes"], memory=max(row["memory"], job["memory_gb"]))
            row["hours"] += job["gpu_hours"]
            row["link"] += job["communication_seconds"] * max(job["gpus"], 1) / 3600
            row["fits"] &= job["fits"]
    layouts = ["| model | stage | GPUs (nodes) | peak GB per GPU | fits | GPU-hours | of which inter-node |",
               "|---|---|---|---|---|---|---|"]
    for (model, stage), r in sorted(training.items(), key=lambda item: (models.index(item[0][0]), item[0][1])):
        layouts.append(f"| {model} | {stage} | {r['gpus']} ({r['nodes']}) | {r['memory']:.0f} | "
                       f"{'yes' if r['fits'] else '**no**'} | {r['hours']:.1f} | {r['link']:.1f} |")
    cluster = plan["cluster"]
    section = "\n".join([
        "## preflight (benchmarks/preflight.py)", "",
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPU cores): `lmadapt preflight` on "
        f"the full paper grid (10 seeds, HANS's 30,000 rows; {sum(plan['cells'].values())} cells, "
        f"{len(plan['jobs'])} model jobs costed) after fetch and sample, with the rehearsal's hub-shaped samples "
        "and tokenizer and the real models' sizes in their configs. Target: < 30 s.", "",
        "| run | seconds (best of 3) | expected skipped ICL cells | notes (reduced, truncated) | errors |",
        "|---|---|---|---|---|",
        f"| paper grid | {min(runs):.1f} | {len(plan['expected_skipped'])} | {len(plan['notes'])} | "
        f"{len(plan['errors'])} |", "",
        f"Estimated GPU-hours by model and stage (preflight's estimate: one GPU = {cluster['gpu_memory_gb']} GB, "
        f"{cluster['gpu_tflops']} TFLOP/s at {cluster['mfu']:.0%} utilisation, weights loaded at "
        f"{cluster['load_gb_per_s']} GB/s; fine-tuning FLOPs 6N per token (8N with gradient checkpointing, "
        "4N/6N for LoRA) over each model's epochs, inference 2N per token; instruct: the derived models' "
        "instruction tuning):", "", *rows, "",
        "The OPT models' training on their layouts (config/paper.yaml: 4 GPUs for OPT-6.7B and 13B, two nodes of 4 "
        "for 30B; ZeRO-3; the link between nodes at "
        f"{cluster['internode_gb_per_s']} GB/s, added to the compute's time):", "",
        *layouts, "",
        f"**Total: {plan['gpu_hours']:.0f} GPU-hours.** No GPU was lent to this task, so these are estimates, not "
        "measurements.", ""])
    write_section(REPO / "docs" / "benchmarks.md", "preflight", section)
    print(section)


if __name__ == "__main__":
    main()
