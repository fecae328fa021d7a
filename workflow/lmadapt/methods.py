"""The registry of fine-tuning methods and model kinds. A method is one `Method` entry: the head that scores the
classes (the model head it loads and builds on, its loss, its prediction), whether LoRA adapters train instead of
every weight and whether it learns a prompted teacher's distribution, the model kinds it runs on, the settings it
computes with and its cost (parameters trained, FLOPs per token, optimizer-state bytes). `finetune` trains with
it, the preflight costs it, the config checks and the schema read it, the rules constrain `{method}` to it. Torch is
imported only where a head computes, so the rules and the checks read the registry without it; the heads compute
through forward.py alone, so that the registry sits below everything that reads it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DECODER, ENCODER_DECODER, ENCODER = "decoder", "encoder-decoder", "encoder"

# Decoder families by config.json `model_type` (a checkpoint whose architecture names a causal LM head is one too).
DECODER_TYPES = ("opt", "gpt2", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "phi", "gemma", "bloom", "falcon")
BYTES_16BIT = 2


class ClassifierHead:
    """A new classification head on the model (sequence classification): its logits are the classes'."""

    name = "classifier"
    loads = "classification"  # models.load_model's head
    peft_task = "SEQ_CLS"  # peft's task type for LoRA adapters on it
    verbalizer: str | None = None  # which verbalizer tokens it scores (None, "first", "whole"): checked before a job

    def build(self, model, n_labels: int):
        """The model this head trains, from the one models.load_model gave for `loads` (a new head may add its
        own layers here)."""
        return model

    def logits(self, model, ids, mask, verbalizers: list[list[int]]):
        """[B, C] class scores of a padded batch."""
        return model(input_ids=ids, attention_mask=mask).logits

    def loss(self, model, ids, mask, gold, verbalizers: list[list[int]]):
        import torch
        return torch.nn.functional.cross_entropy(self.logits(model, ids, mask, verbalizers).float(), gold)

    def predict(self, model, inputs: list[list[int]], pad_id: int, verbalizers: list[list[int]], batch_size: int,
                desc: str):
        """Each input's likeliest class (numpy), in batches (halved where one runs out of memory)."""
        import torch

        from .forward import HalvingBatches, pad_batch
        device = next(model.parameters()).device
        predictions = []

        def predict_batch(batch):
            ids, mask = pad_batch([inputs[i] for i in batch], pad_id, device)
            predictions.append(self.logits(model, ids, mask, verbalizers).argmax(-1).cpu())

        with torch.no_grad():
            HalvingBatches.of(batch_size).run(list(range(len(inputs))), predict_batch)
        return torch.cat(predictions).numpy()


class VerbalizerHead(ClassifierHead):
    """The LM head scores each label's verbalizer by its first token at the last real position (PET-style);
    computed on that position only."""

    name, loads, peft_task, verbalizer = "verbalizer", "causal", "CAUSAL_LM", "first"

    def logits(self, model, ids, mask, verbalizers):
        import torch

        from .forward import last_positions
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = core.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_positions(mask)]
        return core.get_output_embeddings()(last)[:, [verbalizer[0] for verbalizer in verbalizers]]


class Seq2SeqHead(ClassifierHead):
    """An encoder-decoder's decoder generates the verbalizer: it learns the gold one as its target; a class's
    score is its whole verbalizer's log-likelihood (as icl scores an encoder-decoder)."""

    name, loads, peft_task, verbalizer = "seq2seq", "seq2seq", "SEQ_2_SEQ_LM", "whole"

    @staticmethod
    def targets(verbalizers: list[list[int]], labels, device):
        """[B, L] decoder targets: each example's verbalizer, right-padded with -100 (ignored by the loss)."""
        import torch
        width = max(map(len, verbalizers))
        rows = [verbalizers[label] + [-100] * (width - len(verbalizers[label])) for label in labels.tolist()]
        return torch.tensor(rows, device=device)

    def logits(self, model, ids, mask, verbalizers):
        import torch
        scores = []
        for label in range(len(verbalizers)):
            targets = self.targets(verbalizers, torch.full((len(ids),), label), ids.device)
            logprobs = model(input_ids=ids, attention_mask=mask, labels=targets).logits.float().log_softmax(-1)
            picked = logprobs.gather(-1, targets.clamp_min(0)[..., None])[..., 0]
            scores.append(torch.where(targets >= 0, picked, 0.0).sum(-1))
        return torch.stack(scores, -1)

    def loss(self, model, ids, mask, gold, verbalizers):
        return model(input_ids=ids, attention_mask=mask, labels=self.targets(verbalizers, gold, ids.device)).loss

    def predict(self, model, inputs, pad_id, verbalizers, batch_size, desc):
        from .forward import seq2seq_label_logprobs
        return seq2seq_label_logprobs(model, pad_id, inputs, verbalizers, batch_size, desc).argmax(1)


def distill_loss(student_logits, teacher_probs, labels, temperature: float, kl_weight: float, ce_weight: float):
    """kl_weight * T^2 * KL(teacher || student at temperature T) + ce_weight * CE(gold); returns (loss, kl, ce)."""
    import torch
    student = (student_logits / temperature).log_softmax(-1)
    teacher = teacher_probs.clamp_min(1e-12)
    if temperature != 1.0:
        teacher = (teacher.log() / temperature).softmax(-1)
    kl = (teacher * (teacher.log() - student)).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(student_logits, labels)
    return kl_weight * temperature ** 2 * kl + ce_weight * ce, kl, ce


@dataclass(frozen=True)
class Method:
    head: ClassifierHead
    lora: bool  # LoRA adapters (peft) train instead of every weight
    teacher: bool  # learns a prompted teacher's label distribution (context distillation)
    kinds: tuple[str, ...]  # the model kinds it runs on
    summary: str

    def needs(self) -> list[str]:
        """The finetune keys only this kind of method computes with (a job's settings must hold them): `lora`
        (whose lr replaces `lr`) or `lr`, and the teacher's `distill` weights."""
        return (["lora"] if self.lora else ["lr"]) + (["distill"] if self.teacher else [])

    def own_settings(self, finetune: dict) -> dict:
        """Those keys' values in a finetune section (of distill, the loss weights: the teacher's shots and batch
        are the teacher job's), so that a LoRA setting reruns only LoRA jobs."""
        own = {key: finetune[key] for key in self.needs()}
        if self.teacher:
            own["distill"] = {key: finetune["distill"][key] for key in ("temperature", "kl_weight", "ce_weight")}
        return own

    def learning_rate(self, settings) -> float:
        """The rate of this method's optimizer (settings: the finetune stage's, settings.Settings)."""
        return settings.lora.lr if self.lora else settings.lr

    def loss(self, model, ids, mask, gold, verbalizers, settings, teacher_probs=None):
        """A batch's training loss: the head's, or the distillation loss against the teacher's distribution."""
        if not self.teacher:
            return self.head.loss(model, ids, mask, gold, verbalizers)
        d = settings.distill
        logits = self.head.logits(model, ids, mask, verbalizers).float()
        return distill_loss(logits, teacher_probs, gold, d.temperature, d.kl_weight, d.ce_weight)[0]

    def trained_parameters(self, shape: dict) -> int:
        """Parameters the optimizer updates (shape: costs.model_shape's)."""
        return shape["lora_parameters"] if self.lora else shape["parameters"]

    def flops_per_token(self, checkpointing: bool) -> int:
        """FLOPs per trained token and parameter: forward 2, backward 4 (LoRA: 2, no weight gradients of the
        frozen base), and one more forward (2) when gradient checkpointing recomputes activations."""
        return (4 if self.lora else 6) + (2 if checkpointing else 0)

    def state_bytes(self, shape: dict, zero_stage: int, offload: bool, gpus: int) -> float:
        """Weights, gradients and optimizer states on one GPU: mixed-precision AdamW keeps 16 bytes a trained
        parameter (16-bit weight and gradient, fp32 master weight and two moments), partitioned by ZeRO over the
        GPUs; LoRA keeps the frozen base in 16 bits (partitioned too under ZeRO-3) and trains only its adapters."""
        n, g = shape["parameters"], max(gpus, 1)
        if offload:
            return BYTES_16BIT * n / g
        if self.lora:
            return BYTES_16BIT * n / (g if zero_stage == 3 else 1) + 16 * self.trained_parameters(shape)
        if zero_stage == 3:
            return 16 * n / g
        return BYTES_16BIT * n + 14 * n / g


CLASSIFIER, VERBALIZER, SEQ2SEQ = ClassifierHead(), VerbalizerHead(), Seq2SeqHead()
METHODS = {
    "head": Method(CLASSIFIER, lora=False, teacher=False, kinds=(DECODER, ENCODER),
                   summary="every weight and a new classification head"),
    "pattern": Method(VERBALIZER, lora=False, teacher=False, kinds=(DECODER,),
                      summary="every weight; the LM head scores each label's verbalizer (PET-style)"),
    "lora_head": Method(CLASSIFIER, lora=True, teacher=False, kinds=(DECODER, ENCODER),
                        summary="LoRA adapters and a new classification head"),
    "lora_pattern": Method(VERBALIZER, lora=True, teacher=False, kinds=(DECODER,),
                           summary="LoRA adapters; the LM head scores the verbalizers"),
    "distill": Method(VERBALIZER, lora=False, teacher=True, kinds=(DECODER,),
                      summary="context distillation: the prompted teacher's label distribution, without the prompt"),
    "seq2seq": Method(SEQ2SEQ, lora=False, teacher=False, kinds=(ENCODER_DECODER,),
                      summary="every weight; the decoder learns the verbalizer as its target (Flan-T5)"),
    "lora_seq2seq": Method(SEQ2SEQ, lora=True, teacher=False, kinds=(ENCODER_DECODER,),
                           summary="LoRA adapters; the decoder learns the verbalizer as its target"),
}


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


def kind_refusal(what: str, runs_on: tuple[str, ...], model: str, kind: str) -> str:
    """Why a model cannot run a stage or method (what), in the words of the config check and of the job."""
    return f"{what} runs on {' and '.join(runs_on)} models; {model} is {with_article(kind)} model"
