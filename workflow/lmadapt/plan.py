"""The preflight's plan (results/plan/preflight.{json,md}): its notes on cells, its errors and the cost of every
job under the `preflight` assumptions; the page a person reads before submitting; and the check that a run
skipped exactly the cells the plan expected (`lmadapt check-skips`)."""
from __future__ import annotations

from collections import defaultdict

import pandas as pd

from .costs import BYTES_16BIT, INTERNODE_GB_PER_S, inference_memory
from .io import markdown_table


class Plan:
    """Rows of the plan, errors, and the cost of every job."""

    def __init__(self, config: dict):
        self.config = config
        self.cluster = {"internode_gb_per_s": INTERNODE_GB_PER_S} | config["preflight"]  # unset: its default
        self.jobs: list[dict] = []
        self.cells: list[dict] = []  # skipped, reduced or truncated cells, and what each does
        self.errors: list[str] = []

    def job(self, stage: str, model: str, task: str, gpus: int, flops: float, memory: float, shape: dict,
            nodes: int = 1, internode_bytes: float = 0.0, in_turn: bool = False, **cell):
        """A job on `gpus` GPUs in all (over `nodes` nodes, moving internode_bytes through each node's link);
        in_turn: its GPUs compute one after another (a model spread over them for inference), at one's speed."""
        load = BYTES_16BIT * shape["parameters"] / (self.cluster["load_gb_per_s"] * 1e9)
        computing = 1 if in_turn else max(gpus, 1)
        compute = flops / (computing * self.cluster["gpu_tflops"] * 1e12 * self.cluster["mfu"])
        communication = internode_bytes / (self.cluster["internode_gb_per_s"] * 1e9)
        self.jobs.append(dict(stage=stage, model=model, task=task, gpus=gpus, nodes=nodes,
                              parameters=shape["parameters"], flops=flops, memory_gb=memory / 1e9,
                              fits=memory / 1e9 <= self.cluster["gpu_memory_gb"], load_seconds=load,
                              compute_seconds=compute, communication_seconds=communication,
                              gpu_hours=(load + compute + communication) * max(gpus, 1) / 3600, **cell))

    def inference_job(self, stage: str, model: str, task: str, flops: float, shape: dict, tokens: int, batch: int,
                      batch_key: str, **cell) -> None:
        """An inference job on batches of `tokens`-long inputs: on one GPU, or spread over the fewest of its node's
        GPUs (models.<name>.gpus) that hold its model with one example (the layers run in turn); a batch that does
        not fit there halves as the job does when it runs out of memory (a note says to what); an error names the
        model where even the node's GPUs cannot hold it. A CPU model (gpus 0): none."""
        memory_on = lambda gpus, size: inference_memory(shape, size, tokens, gpus)  # noqa: E731
        per_node, limit = self.config["models"][model]["gpus"], self.cluster["gpu_memory_gb"]
        fits = lambda gpus, size: memory_on(gpus, size) / 1e9 <= limit  # noqa: E731
        gpus = next((n for n in range(1, per_node + 1) if fits(n, 1)), None) if per_node else 0
        if gpus is None:
            gpus, problem = per_node, f"models.{model}.gpus: {stage} needs about "
            if not any(error.startswith(problem) for error in self.errors):
                spread = f", {memory_on(per_node, 1) / 1e9:.0f} GB on each of its node's {per_node} GPUs"
                self.errors.append(f"{problem}{memory_on(1, 1) / 1e9:.0f} GB on one GPU for one example"
                                   f"{spread * (per_node > 1)}, more than preflight.gpu_memory_gb ({limit}); give it "
                                   "more GPUs per node")
        size = batch
        while gpus and size > 1 and not fits(gpus, size):
            size //= 2  # as forward.HalvingBatches halves it
        if size < batch:
            self.cells.append(dict(cell, stage=stage, model=model, task=task, what=(
                f"a batch of {batch} needs about {memory_on(gpus, batch) / 1e9:.0f} GB per GPU; it halves to {size} "
                f"when it runs out of memory (or set {batch_key}: {size})")))
        self.job(stage, model, task, gpus, flops, memory_on(max(gpus, 1), size), shape, in_turn=True, **cell)


def skipped_cells(plan: dict, tidy: pd.DataFrame) -> tuple[set, set]:
    """(predicted, recorded) skipped ICL cells as (model, task, pattern, shots, seed), and cells that left
    evaluation examples out (icl.fit: skip_examples) as (model, task, pattern, shots, seed, "left out", count):
    the preflight's plan against the records of a finished run (results/tables/all.parquet)."""
    predicted = {(c["model"], c["task"], c["pattern"], c["shots"], c["seed"]) for c in plan["expected_skipped"]}
    predicted |= {(c["model"], c["task"], c["pattern"], c["shots"], c["seed"], "left out", c["skipped_examples"])
                  for c in plan["notes"] if c.get("skipped_examples")}
    icl = tidy[(tidy["method"] == "icl") & tidy["group"].isna()]
    recorded = {(r.model, r.task, r.prompt, int(r.k), int(r.seed)) for r in icl[icl["skipped"].notna()].itertuples()}
    left_out = icl[icl["skipped_examples"] > 0].groupby(["model", "task", "prompt", "k", "seed"])["skipped_examples"]
    recorded |= {(model, task, prompt, int(k), int(seed), "left out", int(n))
                 for (model, task, prompt, k, seed), n in left_out.sum().items()}
    return predicted, recorded


def to_markdown(result: dict) -> str:
    cluster = result["cluster"]
    lines = ["# Preflight", "",
             f"Checked in {result['seconds']} s. Models measured with their own tokenizer: "
             f"{', '.join(result['models_fetched']) or 'none'}"
             + (f"; not fetched yet (static checks only): {', '.join(result['models_not_fetched'])}"
                if result["models_not_fetched"] else "") + ".", ""]
    if result["errors"]:
        lines += ["## Errors: these cells cannot run", ""] + [f"- {e}" for e in result["errors"]] + [""]
    lines += ["## Cells", ""] + markdown_table(["stage", "cells"], [[s, n] for s, n in result["cells"].items()]) + [""]
    if result["demonstrations"]:
        lines += ["## Demonstrations (from each seed's pool, disjoint from every training sample)", ""]
        lines += markdown_table(["config key", "task", "shots", "per class", "pool per class"],
                                [[d["key"], d["task"], d["shots"], d["per_class"], d["pool_per_class"]]
                                 for d in result["demonstrations"]]) + [""]
    skipped = result["expected_skipped"]
    lines += [f"## Expected skipped cells ({len(skipped)})", "",
              "ICL cells whose prompt (prefix + longest evaluation example + label word) does not fit the context; "
              "they are recorded as skipped with these counts, never truncated.", ""]
    if skipped:
        header = ["model", "task", "pattern", "shots", "seed", "prefix tokens", "after prefix", "context"]
        lines += markdown_table(header, [[c["model"], c["task"], c["pattern"], c["shots"], c["seed"],
                                          c["prefix_tokens"], c["tokens_after_prefix"], c["context"]]
                                         for c in skipped]) + [""]
    notes = [c for c in result["notes"] if not c["what"].startswith("skipped")]
    if notes:
        cell_keys = ("pattern", "method", "prompt", "sample", "shots", "k", "seed")
        lines += [f"## Reduced or truncated ({len(notes)})", ""]
        lines += markdown_table(["stage", "model", "task", "cell", "what"],
                                [[c["stage"], c["model"], c["task"],
                                  ", ".join(f"{k}={c[k]}" for k in cell_keys if c.get(k) is not None), c["what"]]
                                 for c in notes]) + [""]
    by = defaultdict(lambda: {"jobs": 0, "gpu_hours": 0.0, "memory": 0.0, "flops": 0.0, "fits": True, "gpus": 0,
                              "communication": 0.0})
    for job in result["jobs"]:
        row = by[job["model"], job["stage"]]
        row["jobs"] += 1
        row["gpu_hours"] += job["gpu_hours"]
        row["communication"] += job.get("communication_seconds", 0.0) * max(job["gpus"], 1) / 3600
        row["flops"] += job["flops"]
        row["memory"] = max(row["memory"], job["memory_gb"])
        row["fits"] &= job["fits"]
        row["gpus"] = f"{job['gpus']} on {job['nodes']} nodes" if job.get("nodes", 1) > 1 else job["gpus"]
    lines += ["## Cost", "",
              f"Assumed: one GPU has {cluster['gpu_memory_gb']} GB and {cluster['gpu_tflops']} TFLOP/s at "
              f"{cluster['mfu']:.0%} utilisation; weights load at {cluster['load_gb_per_s']} GB/s; a node's link to "
              f"the others moves {cluster['internode_gb_per_s']} GB/s (config key "
              f"`preflight`). Memory is the estimated peak on one GPU (16-bit weights; fine-tuning: AdamW states "
              f"under ZeRO, activations of the longest input). GPU-hours include the inter-node communication of "
              f"jobs on several nodes.", ""]
    lines += markdown_table(["model", "stage", "jobs", "GPUs per job", "peak GB per GPU", "fits", "PFLOP", "GPU-hours",
                             "of which inter-node"],
                            [[m, s, r["jobs"], r["gpus"], f"{r['memory']:.1f}", "yes" if r["fits"] else "**no**",
                              f"{r['flops'] / 1e15:.2f}", f"{r['gpu_hours']:.2f}",
                              f"{r['communication']:.2f}" if r["communication"] else "–"]
                             for (m, s), r in sorted(by.items())])
    lines += ["", f"**Estimated total: {result['gpu_hours']:.1f} GPU-hours** for {len(result['jobs'])} model jobs.",
              ""]
    return "\n".join(lines)
