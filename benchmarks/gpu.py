"""The GPU check: what the paper grid's costliest cells cost on one GPU, side by side with the preflight's prediction.

Random weights in the real architectures (OPT-1.3B and OPT-6.7B, built from their hub configs on the GPU: the real
shapes, memory and speed, nothing downloaded) through lmadapt's own code:
- fine-tuning: the paper grid's OPT-1.3B full fine-tuning cell (config/paper.yaml: micro-batch, max length, ZeRO
  stage, gradient checkpointing, fp16 on a GPU) for >= 30 optimizer steps through training.train_epochs, then
  OPT-6.7B with LoRA and with full fine-tuning in the first ZeRO configuration the preflight says fits one GPU:
  tokens/s, MFU, peak memory, fp16 loss-scale events, and measured / predicted memory and step time;
- ICL at 0 and 32 shots (stand-in RTE prompts of real lengths): lmadapt's prefix cache vs batched full
  recomputation as lm-evaluation-harness scores (the whole context per example, 16 per batch);
- extraction of every layer of 300 IMDB-length stand-in reviews, without and with an 8-shot prefix, vs a batched
  `output_hidden_states` forward of each whole prompt;
- numerics: a tiny OPT's activations and ICL log-probabilities on the GPU (fp32, fp16) against the CPU in fp32;
- ZeRO-3's collectives (all-gather, reduce-scatter) in a group of one GPU: the floor under any link. The link
  between nodes itself takes two machines: the preflight's `internode_gb_per_s` stands until a pilot measures it.

    python benchmarks/gpu.py                 # on the GPU machine (docs/benchmarks.md says how): ~6 minutes
    python benchmarks/gpu.py --cpu-smoke     # tiny shapes on CPU (fp32 and bf16), the same code paths: a test

Writes the GPU section of docs/benchmarks.md, docs/gpu-benchmark.json and docs/gpu-calibration.json: the
measurements in the calibration's format (lmadapt/calibration.py), which sizes the paper grid's requests of the
cells measured once it lies at results/plan/pilot/calibration.json (--out DIR: the three there instead).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))
from common import write_section  # noqa: E402

# The shape fields of the hub's config.json of facebook/opt-1.3b and opt-6.7b (the revisions paper.yaml pins);
# "tiny" is the CPU smoke test's (a small vocabulary: full-vocabulary logits of 2,000-token prompts are the
# baseline's cost, which a CPU need not pay to check the code paths).
OPT_SHAPES = {
    "opt_1_3b": dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32, vocab_size=50272),
    "opt_6_7b": dict(hidden_size=4096, ffn_dim=16384, num_hidden_layers=32, num_attention_heads=32, vocab_size=50272),
    "tiny": dict(hidden_size=64, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4, vocab_size=512),
}
OPT_COMMON = dict(max_position_embeddings=2048, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                  do_layer_norm_before=True, activation_function="relu", enable_bias=True)
PEAK_TFLOPS = {"NVIDIA H200": 989.0, "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA A100-SXM4-80GB": 312.0}  # dense 16-bit
VERBALIZER_IDS = [300, 400]  # two stand-in label tokens (any ids: the weights are random)
# Token lengths of the stand-ins (lognormal, clipped), as the real texts run under OPT's tokenizer: an RTE example
# (premise, hypothesis, pattern) about 70 tokens; an IMDB review about 300 (its mean is 230 words).
RTE_LENGTHS, IMDB_LENGTHS = (64, 0.35, 24, 240), (260, 0.55, 40, 1000)


def lengths(n: int, spec, rng) -> list[int]:
    median, sigma, low, high = spec
    return np.clip(rng.lognormal(np.log(median), sigma, n), low, high).astype(int).tolist()


def token_ids(sizes: list[int], rng, vocab: int) -> list[list[int]]:
    return [rng.integers(4, vocab, size).tolist() for size in sizes]


def opt_folder(shape: str, where: Path) -> Path:
    """A folder with the model's config.json only: what the preflight reads a model's shape from."""
    from transformers import OPTConfig

    folder = where / shape
    OPTConfig(**OPT_SHAPES[shape], **OPT_COMMON, word_embed_proj_dim=OPT_SHAPES[shape]["hidden_size"]
              ).save_pretrained(folder)
    return folder


def random_model(folder: Path, device: torch.device, dtype: torch.dtype, overrides: dict | None = None):
    """The architecture of `folder` with random weights, materialised on `device` (no checkpoint is read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    for key, value in (overrides or {}).items():
        if hasattr(config, key):
            setattr(config, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def loaded(model, device, dtype):
    """A random model as lmadapt's stages hold a loaded one (only the pad id of its tokenizer is ever read)."""
    from lmadapt.methods import DECODER
    from lmadapt.models import LoadedModel

    return LoadedModel(tokenizer=SimpleNamespace(pad_token_id=OPT_COMMON["pad_token_id"]),
                       max_length=OPT_COMMON["max_position_embeddings"], kind=DECODER, model=model.eval(),
                       device=device, dtype=dtype, info={})


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_tflops(device) -> float | None:
    return PEAK_TFLOPS.get(torch.cuda.get_device_name()) if device.type == "cuda" else None


# ---------------------------------------------------------------- fine-tuning (one case per process)


def finetune_case(case: dict, where: Path) -> dict:
    """One fine-tuning run through lmadapt's loop: settings from config/paper.yaml's cell, the case's overrides."""
    import deepspeed

    from lmadapt.checks import load_config
    from lmadapt.config import finetune_settings
    from lmadapt.finetune import DROPOUT_KEYS, trainable_model
    from lmadapt.training import deepspeed_config, init_distributed, precision, schedule, train_epochs
    from lmadapt.forward import pad_batch
    from lmadapt.costs import model_shape, training_memory
    from lmadapt.methods import METHODS
    from lmadapt.settings import read_settings

    init_distributed()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    paper = load_config(REPO / "config/paper.yaml")
    method, shape_name = case["method"], case["shape"]
    # the case's epochs (>= 30 optimizer steps for OPT-1.3B), no checkpoint: the training alone is timed
    raw = finetune_settings(paper, method, case["model"]) | {"checkpoint_every": 10 ** 9, "keep_checkpoint": False}
    raw.update(case.get("settings", {}), epochs=case["epochs"])
    settings = read_settings("finetune", raw, method)
    zero_file = REPO / "config/deepspeed" / f"{case['zero']}.json"
    zero = json.loads(zero_file.read_text())["zero_optimization"]
    folder = opt_folder(shape_name, where)
    shape = model_shape(folder, raw.get("lora"))
    rng = np.random.default_rng(0)
    examples = token_ids(lengths(case["rows"], RTE_LENGTHS, rng), rng, OPT_SHAPES[shape_name]["vocab_size"])
    examples = [ids[: settings.max_length] for ids in examples]
    labels = torch.tensor(rng.integers(0, len(VERBALIZER_IDS), len(examples)))
    dtype = precision(settings.precision)
    accum, order_length, total_steps = schedule(len(examples), settings, 1)
    config = deepspeed_config(str(zero_file), settings, METHODS[method].learning_rate(settings), accum,
                              total_steps, dtype)
    predicted_memory = training_memory(shape, method, settings, zero["stage"], "offload_param" in zero, 1,
                                       max(map(len, examples)))
    row = dict(case=case["name"], model=case["model"], method=method, zero=case["zero"], precision=dtype,
               micro_batch=settings.batch_size, effective_batch=settings.effective_batch,
               gradient_checkpointing=settings.gradient_checkpointing, parameters=shape["parameters"],
               predicted_memory_gb=predicted_memory / 1e9)
    reset_peak(device)
    try:
        model = random_model(folder, device, torch.float32, dict.fromkeys(DROPOUT_KEYS, settings.dropout))
        model = trainable_model(model, method, settings)
        engine, *_ = deepspeed.initialize(model=model, config=config,
                                          model_parameters=[p for p in model.parameters() if p.requires_grad])
        row["setup_peak_memory_gb"] = peak_gb(device)
        reset_peak(device)
        marks = []

        def batch_loss(batch):
            ids, mask = pad_batch([examples[i] for i in batch], OPT_COMMON["pad_token_id"], engine.device)
            return METHODS[method].loss(engine.module, ids, mask, labels[batch].to(engine.device),
                                        [[token] for token in VERBALIZER_IDS], settings), mask

        def after_epoch(epoch, state):
            synchronize(device)
            marks.append((time.time(), state["tokens"], state["micro_step"]))

        synchronize(device)
        marks.append((time.time(), 0, 0))
        state = train_epochs(engine, np.array(list(map(len, examples))), order_length, settings, 0, 0, 1, accum,
                             where / "checkpoints", "gpu-check", batch_loss, after_epoch=after_epoch)
    except torch.OutOfMemoryError as e:  # itself a finding: the memory model said it fits
        return row | {"error": f"CUDA out of memory: {str(e).splitlines()[0]}"}
    # the first epoch warms up (kernels, allocator); the rate is the later epochs'
    (t0, tokens0, micro0), (t1, tokens1, micro1) = marks[1 if len(marks) > 2 else 0], marks[-1]
    seconds, tokens, steps = t1 - t0, tokens1 - tokens0, (micro1 - micro0) / accum
    per_token = METHODS[method].flops_per_token(settings.gradient_checkpointing)
    peak = peak_tflops(device)
    step_seconds = seconds / max(steps, 1e-9)
    tokens_per_step = tokens / max(steps, 1e-9)
    mfu_assumed = paper["preflight"]["mfu"]
    optimizer = engine.optimizer
    row |= dict(optimizer_steps=state["micro_step"] // accum, timed_steps=steps, tokens_per_s=tokens / seconds,
                step_seconds=step_seconds, flops_per_token=per_token * shape["parameters"],
                mfu=per_token * shape["parameters"] * tokens / seconds / (peak * 1e12) if peak else None,
                peak_memory_gb=peak_gb(device), loss_first=state["losses"][0], loss_last=state["losses"][-1],
                skipped_steps=int(getattr(engine, "skipped_steps", 0)),
                loss_scale=float(getattr(optimizer, "loss_scale", getattr(optimizer, "cur_scale", 0)) or 0) or None)
    if peak:  # the preflight's time model (FLOPs / (peak x assumed MFU)) with this GPU's peak
        row["predicted_step_seconds"] = per_token * shape["parameters"] * tokens_per_step / (peak * 1e12 * mfu_assumed)
        row["step_time_ratio"] = step_seconds / row["predicted_step_seconds"]
    if row["peak_memory_gb"]:
        row["memory_ratio"] = row["peak_memory_gb"] / row["predicted_memory_gb"]
    return row


def finetune_cases(smoke: bool, gpu_gb: float | None, paper: dict) -> list[dict]:
    """The cases, each run in its own process (DeepSpeed's state and the GPU's memory start clean)."""
    if smoke:  # tiny shapes; fp32 (the paper's "auto" on CPU) and bf16; ZeRO-2 and ZeRO-3
        return [dict(name="full", shape="tiny", model="opt_1_3b", method="pattern", zero="zero3", rows=64, epochs=2),
                dict(name="lora_zero2_bf16", shape="tiny", model="opt_6_7b", method="lora_pattern", zero="zero2",
                     rows=64, epochs=2, settings={"precision": "bf16"})]
    # effective batch 32: OPT-1.3B 10 steps an epoch, 40 in all; OPT-6.7B LoRA 12, full 4
    cases = [dict(name="opt_1_3b_full", shape="opt_1_3b", model="opt_1_3b", method="pattern", zero="zero3", rows=320,
                  epochs=4),
             dict(name="opt_1_3b_full_zero2", shape="opt_1_3b", model="opt_1_3b", method="pattern", zero="zero2",
                  rows=320, epochs=4),
             dict(name="opt_6_7b_lora", shape="opt_6_7b", model="opt_6_7b", method="lora_pattern", zero="zero3",
                  rows=128, epochs=3)]
    return cases + [dict(name="opt_6_7b_full", shape="opt_6_7b", model="opt_6_7b", method="pattern",
                         zero=full_6_7b_zero(gpu_gb, paper), rows=64, epochs=2)]


def full_6_7b_zero(gpu_gb: float | None, paper: dict) -> str:
    """The paper's ZeRO stage if the preflight says OPT-6.7B's full fine-tuning fits one GPU, else with offload."""
    from lmadapt.config import finetune_settings
    from lmadapt.costs import model_shape, training_memory
    from lmadapt.settings import section_settings

    settings = section_settings("finetune", finetune_settings(paper, "pattern", "opt_6_7b"))
    with tempfile.TemporaryDirectory() as where:
        shape = model_shape(opt_folder("opt_6_7b", Path(where)))
    for zero in (paper["finetune"]["zero"], "zero3_offload"):
        stage = json.loads((REPO / "config/deepspeed" / f"{zero}.json").read_text())["zero_optimization"]
        memory = training_memory(shape, "pattern", settings, stage["stage"], "offload_param" in stage, 1, 256)
        if gpu_gb and memory / 1e9 <= 0.9 * gpu_gb:
            return zero
    return "zero3_offload"


def run_finetune_cases(smoke: bool, gpu_gb: float | None, paper: dict) -> list[dict]:
    rows = []
    cases = finetune_cases(smoke, gpu_gb, paper)
    while cases:
        case = cases.pop(0)
        proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
        result = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if proc.returncode or not result.startswith("{"):
            rows.append(dict(case=case["name"], model=case["model"], method=case["method"], zero=case["zero"],
                             error=(proc.stderr.strip().splitlines() or ["no output"])[-1][:300]))
            print(f"fine-tuning case {case['name']} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        else:
            rows.append(json.loads(result))
        print(f"finetune {case['name']}: {rows[-1]}", file=sys.stderr)
        if "out of memory" in rows[-1].get("error", "") and case["zero"] != "zero3_offload":
            cases.insert(0, dict(case, name=f"{case['name']}_offload", zero="zero3_offload"))  # what fits, then
    return rows


# ---------------------------------------------------------------- ICL and extraction, lmadapt vs full recomputation


def full_logprobs(lm, prefix, examples, batches) -> np.ndarray:
    """lm-evaluation-harness's way: every example's whole context, right-padded in batches, logits everywhere."""
    from lmadapt.forward import pad_batch

    out = np.zeros((len(examples), len(VERBALIZER_IDS)))
    with torch.no_grad():
        for batch in batches:
            ids, mask = pad_batch([prefix + examples[i] for i in batch], OPT_COMMON["pad_token_id"], lm.device)
            logits = lm.model(input_ids=ids, attention_mask=mask).logits
            last = mask.sum(1) - 1
            logprobs = logits[torch.arange(len(batch), device=lm.device), last].float().log_softmax(-1)
            out[batch] = logprobs[:, VERBALIZER_IDS].cpu().numpy()
    return out


def timed(device, function):
    reset_peak(device)
    synchronize(device)
    start = time.time()
    result = function()
    synchronize(device)
    return result, time.time() - start, peak_gb(device)


# What ZeRO-3 gathers and reduce-scatters, in elements: DeepSpeed's stage3_param_persistence_threshold (smaller
# parameters are never partitioned), its stage3_prefetch_bucket_size, and one OPT-30B layer (12 x 7,168^2).
COLLECTIVE_SIZES, SMOKE_COLLECTIVE_SIZES = (10**5, 5 * 10**7, 12 * 7168**2), (10**3, 10**5)


def collective_rows(device: torch.device, smoke: bool) -> list[dict]:
    """ZeRO-3's all-gather and reduce-scatter through torch.distributed (NCCL on a GPU, gloo on the CPU) in a group
    of one: each call's launch and on-device copy, the floor under whatever link joins nodes, at the sizes ZeRO-3
    moves. One GPU cannot measure that link: the preflight prices it at preflight.internode_gb_per_s."""
    import torch.distributed as dist

    dtype = torch.float32 if smoke else torch.float16
    rows = []
    with tempfile.TemporaryDirectory() as where:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{where}/store",
                                rank=0, world_size=1)
        try:
            for elements in SMOKE_COLLECTIVE_SIZES if smoke else COLLECTIVE_SIZES:
                source = torch.ones(elements, dtype=dtype, device=device)
                target = torch.empty_like(source)
                calls = {"all-gather": lambda: dist.all_gather_into_tensor(target, source),
                         "reduce-scatter": lambda: dist.reduce_scatter_tensor(target, source)}
                for op, call in calls.items():
                    call()  # the first call sets the communicator up
                    repeats = 20
                    _, seconds, _ = timed(device, lambda call=call: [call() for _ in range(repeats)])
                    size = source.numel() * source.element_size()
                    rows.append(dict(op=op, elements=elements, megabytes=size / 1e6,
                                     microseconds_per_call=seconds / repeats * 1e6,
                                     gb_per_s=size * repeats / seconds / 1e9))
        finally:
            dist.destroy_process_group()
    return rows


def icl_rows(lm, shots_list, n, rng) -> list[dict]:
    from lmadapt.forward import PrefixForward, batches_by_length
    from lmadapt.icl import label_logprobs

    vocab = lm.model.config.vocab_size
    examples = token_ids(lengths(n, RTE_LENGTHS, rng), rng, vocab)
    rows = []
    for shots in shots_list:
        demos = token_ids(lengths(shots, RTE_LENGTHS, rng), rng, vocab)
        budget = lm.max_length - max(map(len, examples))  # as fit_demonstrations: the longest example must fit
        while sum(map(len, demos)) > budget:
            demos.pop()
        prefix = [OPT_COMMON["bos_token_id"]] + [t for demo in demos for t in demo]
        batches = batches_by_length([len(e) for e in examples], 16)
        full_logprobs(lm, prefix, examples, batches[:1])  # warm-up: kernels and allocator
        ours, ours_s, ours_gb = timed(lm.device, lambda: label_logprobs(
            PrefixForward(lm, prefix), examples, [[v] for v in VERBALIZER_IDS], 16, "icl"))
        full, full_s, full_gb = timed(lm.device, lambda: full_logprobs(lm, prefix, examples, batches))
        rows.append(dict(shots=len(demos), shots_requested=shots, prefix_tokens=len(prefix), examples=n,
                         tokens=len(prefix) + sum(map(len, examples)), seconds=ours_s,
                         lmadapt_examples_per_s=n / ours_s, baseline_examples_per_s=n / full_s, speedup=full_s / ours_s,
                         lmadapt_peak_gb=ours_gb, baseline_peak_gb=full_gb,
                         same_predictions=float((ours.argmax(1) == full.argmax(1)).mean()),
                         max_logprob_difference=float(np.abs(ours - full).max())))
        print(f"icl {rows[-1]}", file=sys.stderr)
    return rows


def pooled(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from lmadapt.forward import pool

    return pool(states.float(), mask, "last").cpu(), pool(states.float(), mask, "mean").cpu()


def extract_rows(lm, shots, n, rng) -> list[dict]:
    """Every layer's last and mean pooling, copied to the CPU as the stage stores them (the ICL rows before
    warmed the GPU up)."""
    from lmadapt.forward import PrefixForward, batches_by_length, pad_batch
    from lmadapt.prompt import PREFIX_SHARE

    layers = list(range(lm.model.config.num_hidden_layers + 1))
    vocab = lm.model.config.vocab_size
    examples = token_ids(lengths(n, IMDB_LENGTHS, rng), rng, vocab)
    rows = []
    for wanted in (0, shots):
        demos = token_ids(lengths(wanted, IMDB_LENGTHS, rng), rng, vocab)
        while sum(map(len, demos)) > lm.max_length * PREFIX_SHARE:  # as prefix_demonstrations: at most half
            demos.pop()
        prefix = [OPT_COMMON["bos_token_id"]] + [t for demo in demos for t in demo]
        examples_fit = [e[: lm.max_length - len(prefix)] for e in examples]
        batches = batches_by_length([len(e) for e in examples_fit], 16)

        def ours():
            forward = PrefixForward(lm, prefix)
            out = []
            for batch in batches:
                states, mask = forward.hidden_states([examples_fit[i] for i in batch], layers)
                out.append({j: pooled(states[j], mask) for j in layers})
            return out

        def full():
            out = []
            with torch.no_grad():
                for batch in batches:
                    ids, mask = pad_batch([prefix + examples_fit[i] for i in batch], OPT_COMMON["pad_token_id"],
                                          lm.device)
                    states = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
                    own = mask.clone()
                    own[:, : len(prefix)] = 0
                    out.append({j: pooled(states[j], own) for j in layers})
            return out

        mine, ours_s, ours_gb = timed(lm.device, ours)
        theirs, full_s, full_gb = timed(lm.device, full)
        difference = max(float((a[j][k] - b[j][k]).abs().max()) for a, b in zip(mine, theirs) for j in layers
                         for k in (0, 1))
        rows.append(dict(shots=len(demos), shots_requested=wanted, prefix_tokens=len(prefix), examples=n,
                         tokens=len(prefix) + sum(map(len, examples_fit)), seconds=ours_s,
                         layers=len(layers), lmadapt_examples_per_s=n / ours_s, baseline_examples_per_s=n / full_s,
                         speedup=full_s / ours_s, lmadapt_peak_gb=ours_gb, baseline_peak_gb=full_gb,
                         max_activation_difference=difference))
        print(f"extract {rows[-1]}", file=sys.stderr)
    return rows


# ---------------------------------------------------------------- numerics


def numerics_rows(where: Path, device: torch.device, smoke: bool) -> list[dict]:
    """A tiny OPT (real tokenizer, saved and loaded as a checkpoint) on `device` against the CPU in fp32."""
    from lmadapt.forward import PrefixForward
    from lmadapt.icl import label_logprobs
    from lmadapt.models import load_model
    from lmadapt.testing import build_tiny_opt

    words = "the film was good bad great awful plot actor scene review".split()
    folder = build_tiny_opt(where / "tiny_opt", [" ".join(words)], hidden=64, layers=4)
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, rng.integers(5, 40))) for _ in range(48)]
    reference = load_model(folder, dtype="float32", device=torch.device("cpu"))
    examples = [reference.encode(text) for text in texts]
    prefix = reference.leading_special_ids() + reference.encode(" ".join(texts[:3]))
    verbalizers = [reference.encode(" good"), reference.encode(" bad")]
    layers = list(range(reference.model.config.num_hidden_layers + 1))

    def run(lm):
        forward = PrefixForward(lm, prefix)
        states, mask = forward.hidden_states(examples[:16], layers)
        return ({j: pooled(states[j], mask)[1] for j in layers},
                label_logprobs(forward, examples, verbalizers, 16, "numerics"))

    want_states, want_logprobs = run(reference)
    rows = []
    for dtype in ("float32", "bfloat16") if smoke else ("float32", "float16"):
        lm = load_model(folder, dtype=dtype, device=device)
        states, logprobs = run(lm)
        rows.append(dict(device=device.type, dtype=dtype,
                         max_activation_difference=max(float((states[j] - want_states[j]).abs().max())
                                                       for j in layers),
                         max_logprob_difference=float(np.abs(logprobs - want_logprobs).max()),
                         same_predictions=float((logprobs.argmax(1) == want_logprobs.argmax(1)).mean())))
        print(f"numerics {rows[-1]}", file=sys.stderr)
    return rows


# ---------------------------------------------------------------- report


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    def cell(row, key, fmt):
        value = row.get(key)
        return "–" if value is None else format(value, fmt) if fmt else str(value)

    head = "| " + " | ".join(title for title, _, _ in columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(cell(r, k, f) for _, k, f in columns) + " |" for r in rows)


def markdown(result: dict) -> str:
    env = result["environment"]
    ft_columns = [("case", "case", ""), ("ZeRO", "zero", ""), ("precision", "precision", ""),
                  ("steps", "optimizer_steps", ""), ("tokens/s", "tokens_per_s", ".0f"), ("MFU", "mfu", ".1%"),
                  ("peak GB", "peak_memory_gb", ".1f"), ("predicted GB", "predicted_memory_gb", ".1f"),
                  ("memory measured/predicted", "memory_ratio", ".2f"), ("s/step", "step_seconds", ".3f"),
                  ("predicted s/step", "predicted_step_seconds", ".3f"), ("time measured/predicted", "step_time_ratio",
                                                                          ".2f"),
                  ("skipped (fp16 overflow)", "skipped_steps", ""), ("loss scale", "loss_scale", ".0f"),
                  ("loss first → last", "loss", ""), ("error", "error", "")]
    for row in result["finetune"]:
        if "loss_first" in row:
            row["loss"] = f"{row['loss_first']:.3f} → {row['loss_last']:.3f}"
    inference = [("shots (asked)", "shots_label", ""), ("prefix tokens", "prefix_tokens", ""),
                 ("lmadapt ex/s", "lmadapt_examples_per_s", ".1f"), ("baseline ex/s", "baseline_examples_per_s", ".1f"),
                 ("speed-up", "speedup", ".1f"), ("lmadapt peak GB", "lmadapt_peak_gb", ".1f"),
                 ("baseline peak GB", "baseline_peak_gb", ".1f")]
    for row in result["icl"] + result["extract"]:
        row["shots_label"] = f"{row['shots']} ({row['shots_requested']})"
    return "\n".join([
        f"## On a GPU ({env['device']}{', CPU smoke run' if result['smoke'] else ''})\n",
        f"`benchmarks/gpu.py`, {env['date']}: random weights in OPT's real shapes, built on the device; torch "
        f"{env['torch']}, transformers {env['transformers']}, DeepSpeed {env['deepspeed']}, peft {env['peft']} "
        f"(image: torch, tokenizers, accelerate, numpy, pandas; carried as wheels by `benchmarks/gpu-wheels.sh`: "
        f"transformers, peft, DeepSpeed, pydantic, hjson, jsonschema). Peak {env['peak_tflops'] or '–'} TFLOP/s "
        f"dense 16-bit; MFU = FLOPs per token (6N, 8N with gradient checkpointing, LoRA 4N/6N) x tokens/s / peak. "
        f"Predictions: the preflight's memory model, and its time model (FLOPs / (peak x assumed MFU "
        f"{env['mfu_assumed']})). Took {result['seconds']:.0f} s.\n",
        "Fine-tuning (config/paper.yaml's cells; RTE-length stand-in rows):\n",
        table(result["finetune"], ft_columns) + "\n",
        "ICL, OPT-1.3B shapes (lmadapt's prefix cache vs batched full recomputation as lm-evaluation-harness "
        "scores; agreement of predictions and the largest log-probability difference in the JSON):\n",
        table(result["icl"], inference) + "\n",
        f"Extraction of every layer, OPT-1.3B shapes, {result['extract'][0]['examples']} IMDB-length stand-ins "
        "(the prefix keeps at most half the context, as the stage does):\n",
        table(result["extract"], inference) + "\n",
        "Numerics (tiny OPT, against the CPU in fp32):\n",
        table(result["numerics"], [("device", "device", ""), ("dtype", "dtype", ""),
                                   ("max |Δ activation|", "max_activation_difference", ".2e"),
                                   ("max |Δ log p|", "max_logprob_difference", ".2e"),
                                   ("same predictions", "same_predictions", ".0%")]) + "\n",
        "ZeRO-3's collectives in a group of one GPU (the call's launch and on-device copy: the floor under any "
        "link; DeepSpeed's persistence threshold, its prefetch bucket and one OPT-30B layer):\n",
        table(result["collectives"], [("collective", "op", ""), ("MB", "megabytes", ".1f"),
                                      ("µs per call", "microseconds_per_call", ".0f"), ("GB/s", "gb_per_s", ".1f")])
        + "\n",
        calibration_note(result),
    ])


def calibration_note(result: dict) -> str:
    """What the calibration written beside the JSON predicts for the paper grid's cells of the measured kinds."""
    lines = ["The measurements as a calibration (`docs/gpu-calibration.json`; copy it to the cluster's "
             "`results/plan/pilot/calibration.json` to size the requests until the pilot's replaces it). What it "
             "predicts: a cell's compute seconds are its FLOPs (the preflight's count) over the measured throughput, "
             "so against the preflight's estimate:\n"]
    for row in result["finetune"]:
        if row.get("mfu"):
            lines.append(f"- finetune {row['model']} {row['method']} ({row['zero']}): "
                         f"{result['environment']['mfu_assumed'] / row['mfu']:.2f}x the estimated compute time "
                         f"(MFU {row['mfu']:.1%} measured, {result['environment']['mfu_assumed']:.0%} assumed)")
    return "\n".join(lines + [
        "- icl and extract: the throughput of the rows above, in the same file",
        "- across nodes (OPT-30B's training, two nodes): one GPU measures the collectives' floor above, not a "
        "node's link. The preflight adds ZeRO-3's all-gathers and gradient reduce-scatters at "
        "`preflight.internode_gb_per_s` (lmadapt/costs.py: internode_bytes), not overlapped with compute; the "
        "pilot's OPT-30B cells measure what it really costs"])


def gpu_calibration(result: dict, shape: str, parameters: int, paper: dict) -> dict:
    """The measurements as lmadapt's calibration (lmadapt/calibration.py's format): a fit per (stage, model, method)
    measured here, whose throughput a job of the paper grid's own cells divides its FLOPs by. Weights loading and a
    job's start are not measured here (random weights, one process): the preflight's load rate and
    requests.startup_seconds stand in; host memory neither (memory_factor None: the model's mem_mb stays)."""
    device = "cpu" if result["smoke"] else result["environment"]["device"]  # as a job's cost record names it
    common = dict(device=device, jobs=1, gpus=1, compute_intercept_s=0.0,
                  load_bytes_per_s=paper["preflight"]["load_gb_per_s"] * 1e9,
                  startup_s=paper["requests"]["startup_seconds"], memory_intercept_mb=0.0, memory_factor=None)
    fits = [dict(common, stage="finetune", model=row["model"], method=row["method"],
                 throughput_flops_per_s=row["flops_per_token"] * row["tokens_per_s"],
                 gpu_memory_factor=row.get("memory_ratio")) for row in result["finetune"] if "error" not in row]
    for stage in ("icl", "extract"):
        rows = result[stage]
        fits.append(dict(common, stage=stage, model=shape, method=None, jobs=len(rows), gpu_memory_factor=None,
                         throughput_flops_per_s=2.0 * parameters * sum(r["tokens"] for r in rows) /
                         sum(r["seconds"] for r in rows)))
    return {"fits": fits, "rules": [], "jobs": len(fits), "source": "benchmarks/gpu.py"}


def environment(device: torch.device, mfu_assumed: float) -> dict:
    import importlib.metadata as metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
                date=time.strftime("%Y-%m-%d"), torch=torch.__version__, transformers=version("transformers"),
                deepspeed=version("deepspeed"), peft=version("peft"), peak_tflops=peak_tflops(device),
                mfu_assumed=mfu_assumed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: every code path, fast")
    parser.add_argument("--out", type=Path, help="write benchmarks.md's GPU section and the JSON here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one fine-tuning case, in its own process
    args = parser.parse_args()
    if args.case:
        with tempfile.TemporaryDirectory() as where:
            print(json.dumps(finetune_case(json.loads(args.case), Path(where))))
        return
    start = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu")
    if device.type == "cpu" and not args.cpu_smoke:
        parser.error("no GPU here: run on the GPU machine, or --cpu-smoke")
    from lmadapt.checks import load_config

    gpu_gb = torch.cuda.get_device_properties(0).total_memory / 1e9 if device.type == "cuda" else None
    shape = "tiny" if args.cpu_smoke else "opt_1_3b"
    paper = load_config(REPO / "config/paper.yaml")
    result = dict(smoke=args.cpu_smoke, environment=environment(device, paper["preflight"]["mfu"]))
    result["finetune"] = run_finetune_cases(args.cpu_smoke, gpu_gb, paper)
    with tempfile.TemporaryDirectory() as where:
        dtype = torch.float32 if args.cpu_smoke else torch.float16
        lm = loaded(random_model(opt_folder(shape, Path(where)), device, dtype), device, dtype)
        rng = np.random.default_rng(0)
        result["icl"] = icl_rows(lm, [0, 32], 16 if args.cpu_smoke else 256, rng)
        result["extract"] = extract_rows(lm, 8, 8 if args.cpu_smoke else 300, rng)
        del lm
        gc.collect()
        result["numerics"] = numerics_rows(Path(where), device, args.cpu_smoke)
    result["collectives"] = collective_rows(device, args.cpu_smoke)
    result["seconds"] = time.time() - start
    out = args.out or REPO / "docs"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-benchmark.json").write_text(json.dumps(result, indent=2, default=str))
    from lmadapt.costs import model_shape

    with tempfile.TemporaryDirectory() as where:  # the preflight's parameter count of the shape measured
        parameters = model_shape(opt_folder(shape, Path(where)))["parameters"]
    (out / "gpu-calibration.json").write_text(json.dumps(gpu_calibration(result, shape, parameters, paper), indent=2))
    write_section(out / "benchmarks.md", "gpu", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
