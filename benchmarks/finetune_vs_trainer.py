"""Benchmark: fine-tuning throughput of `lmadapt finetune` against a plain Hugging Face Trainer (the llmft way).

Both train the same model folder with a sequence-classification head (method `head`) on the same Rotten Tomatoes
training sample (the same token ids: lmadapt's prompt formatter), with the same DeepSpeed config (ZeRO-2, fp32,
DeepSpeed's AdamW and WarmupDecayLR: lmadapt's `deepspeed_config`, handed to the Trainer as is), batch, epochs and
learning rate, on this machine's CPU over gloo. The Trainer pads each batch to its longest example
(`DataCollatorWithPadding`, a random sampler: its defaults, as llmft uses it); lmadapt draws batches of similar
lengths. Measured: real (non-padding) tokens per second of training, from the first step to the last (model
loading and DeepSpeed set-up outside), and the padding share (padding / padded tokens). Each run in its own
process. Target: no slower than the Trainer, less padding. Writes docs/benchmarks.md.

    python benchmarks/finetune_vs_trainer.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import smollm2_folder, write_section  # noqa: E402
from extract import TASK  # noqa: E402  (the default study's Rotten Tomatoes task)

WORK = REPO / "resources" / "benchmarks" / "finetune"
SETTINGS = {"epochs": 2, "batch_size": 8, "effective_batch": 8, "lr": 5e-5, "warmup": 0.1,
            "dropout": 0.1, "zero": "zero2", "precision": "fp32", "max_length": 256, "keep_checkpoint": False,
            "checkpoint_every": 1000}
K = 32  # examples per class: 64 training examples, 16 optimizer steps


def prepare() -> tuple[dict, Path]:
    from lmadapt.checks import check_config
    from lmadapt.data import resolve_path
    from lmadapt.sample import run_sample

    config = check_config({"tasks": {"rt": dict(TASK, n_test=50)}, "finetune": SETTINGS})
    task = config["tasks"]["rt"]
    train = WORK / "train.parquet"
    if not train.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        run_sample("rt", task, {"train": str(resolve_path(task["data"]["train"]))}, "train", train, k=K, seed=1)
    return config, train


def worker(args) -> None:
    """One run in this process; prints a JSON line."""
    import torch

    from lmadapt.config import FINETUNE_RUN_SETTINGS, finetune_settings
    from lmadapt.settings import read_settings

    config, train_path = prepare()
    task = config["tasks"]["rt"]
    settings = read_settings("finetune", finetune_settings(config, "head") | {
        key: config["finetune"][key] for key in FINETUNE_RUN_SETTINGS}, "head")
    torch.set_num_threads(args.threads)
    ds_path = REPO / "config/deepspeed" / f"{settings.zero}.json"
    if args.tool == "lmadapt":
        from lmadapt.finetune import run_finetune

        test = WORK / "test.parquet"
        if not test.exists():
            from lmadapt.data import resolve_path
            from lmadapt.sample import run_sample
            run_sample("rt", task, {"train": str(resolve_path(task["data"]["train"]))}, "test", test)
        out = WORK / f"lmadapt_{Path(args.model).name}.json"
        result = run_finetune(args.model, task, str(train_path), {"test": str(test)}, str(out), settings,
                              {"task": "rt", "model": Path(args.model).name, "method": "head", "k": K, "seed": 1},
                              str(WORK / f"work_{Path(args.model).name}"), str(ds_path))
        details = result["records"][0]["details"]
        print(json.dumps({"tokens_per_s": details["train_tokens_per_s"], "padding": details["train_padding_share"],
                          "seconds": details["train_seconds"], "steps": details["optimizer_steps"]}))
        return

    # The Trainer: llmft's set-up (AutoModelForSequenceClassification, DataCollatorWithPadding, DeepSpeed config).
    import deepspeed
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from lmadapt.finetune import build_model
    from lmadapt.training import accumulation_steps, deepspeed_config
    from lmadapt.io import read_table
    from lmadapt.prompt import classifier_inputs, task_pattern
    from lmadapt.sample import META_KEY

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(1)
    lm, model = build_model(args.model, "head", len(task["labels"]), settings)
    train, _ = read_table(str(train_path), META_KEY)
    ids, _ = classifier_inputs(lm, task_pattern(task, None), train, settings.max_length)
    dataset = [{"input_ids": example, "labels": int(label)} for example, label in zip(ids, train["label"])]
    steps = -(-len(dataset) // settings.batch_size) * settings.epochs
    accum = accumulation_steps(settings, 1)
    ds_config = deepspeed_config(str(ds_path), settings, settings.lr, accum, steps, "fp32")
    counted = {"real": 0, "padded": 0}
    collate = DataCollatorWithPadding(lm.tokenizer)

    def collate_and_count(features):
        batch = collate(features)
        counted["real"] += int(batch["attention_mask"].sum())
        counted["padded"] += batch["attention_mask"].numel()
        return batch

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            counted.update(real=0, padded=0, start=time.time())

        def on_train_end(self, *_, **__):
            counted["seconds"] = time.time() - counted["start"]

    arguments = TrainingArguments(
        output_dir=str(WORK / "trainer"), per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=accum, num_train_epochs=settings.epochs, learning_rate=settings.lr,
        weight_decay=settings.weight_decay, max_grad_norm=1.0, deepspeed=ds_config, use_cpu=True,
        save_strategy="no", report_to=[], logging_steps=1000, seed=1, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset, data_collator=collate_and_count,
                      callbacks=[Clock()])
    trainer.train()
    print(json.dumps({"tokens_per_s": counted["real"] / counted["seconds"],
                      "padding": 1 - counted["real"] / counted["padded"], "seconds": counted["seconds"],
                      "steps": trainer.state.global_step}))


def measure(tool: str, model: str, threads: int) -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, __file__, "--worker", "--tool", tool, "--model", model,
                           "--threads", str(threads)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from lmadapt.testing import build_tiny_opt

    threads = min(os.cpu_count() or 1, 2)
    prepare()
    tiny = WORK / "tiny_opt"
    if not (tiny / "config.json").exists():
        build_tiny_opt(tiny)
    rows = ["| model | tool | optimizer steps | train seconds | real tokens/s | padding share | speed-up |",
            "|---|---|---|---|---|---|---|"]
    for label, folder in (("tiny OPT (3 layers, hidden 32)", str(tiny)),
                          ("SmolLM2-135M (30 layers, hidden 576)", smollm2_folder())):
        trainer = measure("trainer", folder, threads)
        ours = measure("lmadapt", folder, threads)
        for tool, result in (("HF Trainer + DeepSpeed", trainer), ("lmadapt finetune", ours)):
            ratio = result["tokens_per_s"] / trainer["tokens_per_s"]
            rows.append(f"| {label} | {tool} | {result['steps']} | {result['seconds']:.1f} | "
                        f"{result['tokens_per_s']:.0f} | {result['padding']:.1%} | {ratio:.2f}x |")
            print(rows[-1], flush=True)
    section = "\n".join([
        "## finetune vs Hugging Face Trainer (benchmarks/finetune_vs_trainer.py)", "",
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPU cores, {threads} threads, "
        "fp32, one process over gloo). Baseline = the llmft way: a Hugging Face Trainer with the same DeepSpeed "
        "config (ZeRO-2, DeepSpeed's AdamW and WarmupDecayLR, the dict lmadapt builds), the same model folder "
        f"with a classification head, the same token ids, batch {SETTINGS['batch_size']}, {SETTINGS['epochs']} "
        f"epochs over {2 * K} Rotten Tomatoes snippets, `DataCollatorWithPadding` (each batch padded to its "
        "longest) and its random sampler. lmadapt: `run_finetune` (method `head`), batches of similar lengths. "
        "Tokens/s counts real tokens from the first training step to the last; padding share = padding / padded "
        "tokens. Target: no slower than the Trainer, less padding.", "", *rows, ""])
    write_section(REPO / "docs" / "benchmarks.md", "finetune_vs_trainer", section)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--tool", choices=["lmadapt", "trainer"])
    parser.add_argument("--model")
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    worker(arguments) if arguments.worker else main()
