"""What the pilot costs on the paper grid: its share of the grid's GPU-hours, from a rehearsal's plan.

The rehearsal's preflight counts every cell's tokens with the real tokenizers' stand-ins on hub-shaped data. Each
job's compute seconds (its FLOPs, and on several nodes the bytes its link moves: both in proportion to the model's
size) and load are scaled here to its model's real parameter count (the shape fields of the hub's config.json of
each model the paper grid pins, instantiated on the meta device by costs.model_shape, as the preflight counts
them), then priced under the plan's `preflight` assumptions; the plan of benchmarks/preflight.py has the real
sizes and the paper's layouts already (nothing scaled). The pilot's cells are calibration.pilot_cells of the same
plan.

    python benchmarks/preflight.py   # or any rehearsal's results/plan/preflight.json
    python benchmarks/pilot.py --plan resources/benchmarks/preflight/plan.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

from common import REPO, write_section
from lmadapt.calibration import BYTES_16BIT, cell_key, pilot_cells, plan_predictions
from lmadapt.checks import load_config
from lmadapt.costs import model_shape
from lmadapt.grid import root_model

OPT = dict(model_type="opt", architectures=["OPTForCausalLM"], vocab_size=50272, max_position_embeddings=2048,
           do_layer_norm_before=True, activation_function="relu", enable_bias=True)
# The shape fields of the hub's config.json of each model config/paper.yaml pins (by hub id).
REAL_SHAPES = {
    "facebook/opt-125m": OPT | dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12,
                                    word_embed_proj_dim=768),
    "facebook/opt-350m": OPT | dict(hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16,
                                    word_embed_proj_dim=512, do_layer_norm_before=False),
    "facebook/opt-1.3b": OPT | dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                                    word_embed_proj_dim=2048),
    "facebook/opt-2.7b": OPT | dict(hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32,
                                    word_embed_proj_dim=2560),
    "facebook/opt-6.7b": OPT | dict(hidden_size=4096, ffn_dim=16384, num_hidden_layers=32, num_attention_heads=32,
                                    word_embed_proj_dim=4096),
    "facebook/opt-13b": OPT | dict(hidden_size=5120, ffn_dim=20480, num_hidden_layers=40, num_attention_heads=40,
                                   word_embed_proj_dim=5120),
    "facebook/opt-30b": OPT | dict(hidden_size=7168, ffn_dim=28672, num_hidden_layers=48, num_attention_heads=56,
                                   word_embed_proj_dim=7168),
    "openai-community/gpt2": dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=50257,
                                  n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "google/flan-t5-base": dict(model_type="t5", architectures=["T5ForConditionalGeneration"], vocab_size=32128,
                                d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_decoder_layers=12, num_heads=12,
                                feed_forward_proj="gated-gelu", tie_word_embeddings=False, is_encoder_decoder=True),
    "FacebookAI/roberta-base": dict(model_type="roberta", architectures=["RobertaForMaskedLM"], vocab_size=50265,
                                    hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1),
}


def real_parameters(hub_id: str) -> int:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(REAL_SHAPES[hub_id]))
        return model_shape(folder)["parameters"]


def share(plan: dict, paper: dict) -> tuple[str, float]:
    cluster = plan["cluster"]
    parameters = {}
    for name in paper["models"]:
        hub_id = paper["models"][root_model(paper, name)]["id"]
        if hub_id in REAL_SHAPES:
            parameters[name] = parameters.get(hub_id) or real_parameters(hub_id)
    pilot = {(rule, cell_key(rule, cell)) for rule, cell in pilot_cells(plan)}
    hours = defaultdict(lambda: [0.0, 0.0])  # (stage, model) -> [grid, pilot]
    for (rule, key), predicted in plan_predictions(plan).items():
        real = parameters.get(predicted["model"])
        if real is None:  # a model without a pinned hub shape here (the reward classifier): left out
            continue
        gpus = max(predicted["gpus"], 1)
        load = BYTES_16BIT * real / (cluster["load_gb_per_s"] * 1e9)
        compute = predicted["compute_seconds"] * real / predicted["parameters"]  # FLOPs and bytes moved: ∝ size
        cost = (load + compute) * gpus / 3600
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
    parser.add_argument("--paper", type=Path, default=REPO / "config/paper.yaml")
    args = parser.parse_args()
    plan = json.loads(args.plan.read_text())
    text, _ = share(plan, load_config(args.paper))
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
