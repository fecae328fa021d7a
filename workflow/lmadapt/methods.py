"""The registry of fine-tuning methods and model kinds: which method trains what, and which stage runs on which
kind of model. Torch-free: the rules (wildcard constraint), the config schema (enum and table defaults), the
config checks and `finetune` all read it. A new method is one entry here, its code in finetune.py and a test.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DECODER, ENCODER_DECODER, ENCODER = "decoder", "encoder-decoder", "encoder"

# Decoder families by config.json `model_type` (a checkpoint whose architecture names a causal LM head is one too).
DECODER_TYPES = ("opt", "gpt2", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "phi", "gemma", "bloom", "falcon")


@dataclass(frozen=True)
class Method:
    head: str  # "classifier": a new classification head; "verbalizer": the LM head's verbalizer tokens;
    # "seq2seq": an encoder-decoder's decoder generates the verbalizer
    lora: bool  # LoRA adapters (peft) train instead of every weight
    teacher: bool  # learns a prompted teacher's label distribution (context distillation)
    kinds: tuple[str, ...]  # the model kinds it runs on
    summary: str


METHODS = {
    "head": Method("classifier", lora=False, teacher=False, kinds=(DECODER, ENCODER),
                   summary="every weight and a new classification head"),
    "pattern": Method("verbalizer", lora=False, teacher=False, kinds=(DECODER,),
                      summary="every weight; the LM head scores each label's verbalizer (PET-style)"),
    "lora_head": Method("classifier", lora=True, teacher=False, kinds=(DECODER, ENCODER),
                        summary="LoRA adapters and a new classification head"),
    "lora_pattern": Method("verbalizer", lora=True, teacher=False, kinds=(DECODER,),
                           summary="LoRA adapters; the LM head scores the verbalizers"),
    "distill": Method("verbalizer", lora=False, teacher=True, kinds=(DECODER,),
                      summary="context distillation: the prompted teacher's label distribution, without the prompt"),
    "seq2seq": Method("seq2seq", lora=False, teacher=False, kinds=(ENCODER_DECODER,),
                      summary="every weight; the decoder learns the verbalizer as its target (Flan-T5)"),
    "lora_seq2seq": Method("seq2seq", lora=True, teacher=False, kinds=(ENCODER_DECODER,),
                           summary="LoRA adapters; the decoder learns the verbalizer as its target"),
}

# The model kinds each model stage runs on (finetune and its teacher: per method, above); a derived model's rule
# (instruct, ppo, classifier) on its base's kind.
STAGE_KINDS = {"extract": (DECODER, ENCODER_DECODER, ENCODER), "icl": (DECODER, ENCODER_DECODER),
               "instruct": (DECODER,), "ppo": (DECODER, ENCODER_DECODER), "classifier": METHODS["head"].kinds}


def method_pattern() -> str:
    """The `{method}` wildcard's constraint: exactly the registered methods."""
    return "|".join(METHODS)


def model_kind(model_config: dict) -> str:
    """A checkpoint's kind from its config.json: encoder-decoder (T5), decoder (OPT, GPT-2) or encoder (BERT)."""
    if model_config.get("is_encoder_decoder"):
        return ENCODER_DECODER
    architectures = model_config.get("architectures") or []
    if model_config.get("model_type") in DECODER_TYPES or any(
            name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return DECODER
    return ENCODER


def folder_kind(folder: str | Path) -> str | None:
    """The kind of the model in a folder, from its config.json (None where there is none yet)."""
    path = Path(folder) / "config.json"
    return model_kind(json.loads(path.read_text())) if path.is_file() else None


def with_article(kind: str) -> str:
    return f"{'an' if kind.startswith('e') else 'a'} {kind}"


def stage_key(stage: str, model: str) -> str:
    """The config key that sends a model to a stage (finetune: the key listing its methods)."""
    return "finetune.methods" if stage == "finetune" else f"{stage}.models"


def kind_problems(cells: dict[str, list[dict]], kinds: dict[str, str], key_of=stage_key) -> list[str]:
    """Cells a model cannot run, one line per (stage or method, model), naming the config key that asks for it.
    cells: the grid by stage; kinds: model name -> kind, for the models whose config.json is at hand;
    key_of(stage, model): the config key that asks for a model's cells of a stage."""
    problems = {}
    for cell_stage, stage_cells in cells.items():
        stage = "extract" if cell_stage == "probe" else cell_stage  # a probe cell is its model's extract jobs
        for cell in stage_cells:
            kind = kinds.get(cell.get("model"))
            if kind is None:
                continue
            if stage == "finetune":
                runs_on, what = METHODS[cell["method"]].kinds, f"method {cell['method']}"
            elif stage in STAGE_KINDS:
                runs_on, what = STAGE_KINDS[stage], stage
            else:
                continue
            if kind not in runs_on:
                key = key_of(stage, cell["model"])
                problems[key, what, cell["model"]] = (f"{key}: {what} runs on {' and '.join(runs_on)} models; "
                                                      f"{cell['model']} is {with_article(kind)} model")
    return list(problems.values())
