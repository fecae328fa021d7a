"""The `finetune` stage: DeepSpeed training of one method on one training sample, then evaluation.

Methods: head (a sequence-classification head), pattern (the LM head restricted to the verbalizer tokens),
lora_head / lora_pattern (peft LoRA adapters on either), distill (context distillation: the student sees the
input without demonstrations and learns the prompted teacher's label distribution, plus cross-entropy on the
gold labels). Always DeepSpeed (ZeRO-2/3, optional CPU offload; fp16 or bf16 on GPUs, fp32 or bf16 on CPU);
one process or many (torchrun / the deepspeed launcher set RANK and WORLD_SIZE). Checkpoints every N optimizer
steps; a killed run resumes from the last one when started again.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from .forward import pad_batch
from .config import FINETUNE_RUN_SETTINGS, ConfigError, fingerprint
from .io import read_table, write_json, write_parquet
from .methods import METHODS, Method, folder_kind, kind_refusal
from .metrics import Cost, classification_record, finish, group_columns, provenance
from .models import load_model, load_tokens, model_record
from .prompt import check_verbalizers, classifier_inputs, task_pattern
from .sample import META_KEY, validation_split
from .settings import Settings


def init_distributed() -> tuple[int, int]:
    """Join the process group that torchrun / the deepspeed launcher describe (RANK, WORLD_SIZE, MASTER_*), or,
    alone, create a one-process group over a file store: no TCP port, so concurrent jobs cannot collide."""
    import deepspeed

    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        else:
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
            store = Path(tempfile.mkdtemp(prefix="lmadapt-dist-")) / "store"
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, rank=0, world_size=1,
                                       init_method=f"file://{store}")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def precision(requested: str) -> str:
    """fp16 on GPUs (bf16 if asked and supported), fp32 on CPU (bf16 if asked): DeepSpeed refuses fp16 on CPU."""
    cuda = torch.cuda.is_available()
    if requested == "auto":
        return "fp16" if cuda else "fp32"
    if requested == "fp16" and not cuda:
        raise ConfigError("finetune.precision: fp16 needs a GPU (DeepSpeed refuses it on CPU); use fp32 or bf16")
    return requested


def accumulation_steps(settings: Settings, world: int) -> int:
    """Micro-batches per optimizer step, so that every model trains with the same effective batch."""
    per_step = settings.batch_size * world
    if settings.effective_batch % per_step:
        raise ConfigError(f"finetune.effective_batch {settings.effective_batch} is not a multiple of batch_size "
                         f"{settings.batch_size} x {world} process(es)")
    return settings.effective_batch // per_step


def schedule(n_examples: int, settings: Settings, world: int) -> tuple[int, int, int]:
    """(accumulation steps, examples each epoch orders, optimizer steps) of a training run: every rank takes the
    same number of micro-batches."""
    accum = accumulation_steps(settings, world)
    order_length = n_examples // world * world
    micro_per_epoch = -(-(order_length // world) // settings.batch_size)
    return accum, order_length, -(-micro_per_epoch * settings.epochs // accum)


def deepspeed_config(base_path: str, settings: Settings, lr: float, accum: int, total_steps: int, dtype: str) -> dict:
    """The DeepSpeed config of a training job (finetune, instruct): the ZeRO file with batch, AdamW, warmup-decay
    schedule and precision."""
    config = json.loads(Path(base_path).read_text())
    config.update(
        train_micro_batch_size_per_gpu=settings.batch_size,
        gradient_accumulation_steps=accum,
        optimizer={"type": "AdamW", "params": {"lr": lr, "weight_decay": settings.weight_decay,
                                               "torch_adam": settings.torch_adam}},
        scheduler={"type": "WarmupDecayLR", "params": {
            "total_num_steps": max(total_steps, 1), "warmup_num_steps": max(1, int(settings.warmup * total_steps)),
            "warmup_max_lr": lr, "warmup_min_lr": 0.0, "warmup_type": "linear"}},
    )
    if dtype == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 12}
    elif dtype == "bf16":
        config["bf16"] = {"enabled": True}
    if not torch.cuda.is_available():  # pinned host memory needs a GPU
        for key in ("offload_optimizer", "offload_param"):
            if key in config.get("zero_optimization", {}):
                config["zero_optimization"][key]["pin_memory"] = False
    return config


def epoch_batches(lengths: np.ndarray, order_length: int, seed: int, epoch: int, rank: int, world: int,
                  batch_size: int, window: int = 50) -> list[np.ndarray]:
    """This process's micro-batches of one epoch: a seeded shuffle (the first order_length examples, every
    world-th from rank); each window of `window` batches sorted by length and cut into batches; the batches
    shuffled. Batches of similar lengths pad little, and their order stays random (Hugging Face's
    group_by_length does the same)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))[:order_length][rank::world]
    span = window * batch_size
    grouped = np.concatenate([sorted(order[i: i + span], key=lambda j: -lengths[j])
                              for i in range(0, len(order), span)]).astype(int) if len(order) else order
    batches = [grouped[i: i + batch_size] for i in range(0, len(grouped), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


CHECKPOINT_FORMAT = 3  # what a checkpoint's client state holds and how batches are drawn (3: length-grouped)
JOB_FILE = "job.json"  # the settings hash of the job whose checkpoints these are


def own_checkpoints(checkpoints: Path, job: dict, rank: int) -> str:
    """The job's hash (job: what it computes with, its data and process count) marks its checkpoints: one resumes
    only the job that wrote it; one left by a job of other settings is removed, and training starts from the
    beginning. Returns the hash."""
    job_hash = fingerprint(dict(job, format=CHECKPOINT_FORMAT))
    if rank == 0 and checkpoints.exists():
        recorded = json.loads((checkpoints / JOB_FILE).read_text()) if (checkpoints / JOB_FILE).is_file() else {}
        if recorded.get("job_hash") != job_hash:
            print(f"{checkpoints}: left by a job with other settings; training from the start", flush=True)
            shutil.rmtree(checkpoints)
    torch.distributed.barrier()
    return job_hash


# finetune.dropout, under each family's names (OPT; BERT/RoBERTa; T5); a model takes the ones its config has.
DROPOUT_KEYS = ("dropout", "attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout_rate")


def build_model(model_dir: str, method: str, n_labels: int, settings: Settings, tokens=None):
    """The method's model (as its head loads and builds it) with the job's dropout, made trainable. tokens: the
    folder's tokenizer, where the verbalizer check already read it."""
    head = METHODS[method].head
    lm = load_model(model_dir, dtype="float32", head=head.loads, num_labels=n_labels, device=torch.device("cpu"),
                    overrides=dict.fromkeys(DROPOUT_KEYS, settings.dropout), tokens=tokens)
    lm.model = head.build(lm.model, n_labels)
    return lm, trainable_model(lm.model, method, settings)


def trainable_model(model, method: str, settings: Settings):
    """A loaded model made ready for DeepSpeed: gradient checkpointing and LoRA adapters as the settings ask."""
    registered = METHODS[method]
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if registered.lora:
        from peft import LoraConfig, get_peft_model

        lora = settings.lora
        model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
            task_type=registered.head.peft_task))
    model.train()
    return model


def checked_method(model_dir: str, keys: dict) -> Method:
    """The cell's method, refused before the weights load where it is unknown or the model's kind cannot run it."""
    if keys["method"] not in METHODS:
        raise ConfigError(f"unknown method {keys['method']!r}: one of {', '.join(METHODS)}")
    name, method, kind = keys["method"], METHODS[keys["method"]], folder_kind(model_dir)
    if kind is not None and kind not in method.kinds:
        raise ConfigError(f"finetune.methods: {kind_refusal(f'method {name}', method.kinds, keys['model'], kind)}")
    return method


@dataclass
class TrainingSample:
    """A job's training sample as the method trains on it: the rows it learns from and those it validates on
    (study 2: a share of each label's rows validates after every epoch), their encoded inputs and gold labels, and
    a distillation method's teacher distribution over them."""

    rows: pd.DataFrame
    train: pd.DataFrame
    validation: pd.DataFrame
    examples: list[list[int]]
    truncated: int
    targets: torch.Tensor
    teacher: torch.Tensor | None
    teacher_meta: dict | None
    meta: dict

    @classmethod
    def read(cls, path: str, lm, pattern, method: Method, settings: Settings, seed: int,
             teacher_path: str | None) -> TrainingSample:
        rows, meta = read_table(path, META_KEY)
        held = validation_split(rows["label"].to_numpy(), settings.validation or 0, seed)
        train, validation = rows[~held], rows[held]
        examples, truncated = classifier_inputs(lm, pattern, train, settings.max_length)
        teacher, teacher_meta = None, None
        if method.teacher:
            if teacher_path is None:
                raise ConfigError("a distillation method needs the teacher's label distribution (--teacher)")
            teacher_rows, teacher_meta = read_table(teacher_path, "lmadapt")
            teacher_rows = teacher_rows.set_index("id").loc[train["id"]]
            teacher = torch.tensor(np.stack(teacher_rows["probs"].to_numpy()), dtype=torch.float32)
        return cls(rows, train, validation, examples, truncated, torch.tensor(train["label"].to_numpy()), teacher,
                   teacher_meta, meta)


@dataclass
class Trainee:
    """A fine-tuning job's model under DeepSpeed, with what its method scores and where it checkpoints."""

    engine: object
    lm: object
    method: Method
    pattern: object
    verbalizers: list[list[int]]  # each label's verbalizer tokens, as encode_prompt (icl) has them
    settings: Settings
    checkpoints: Path
    job_hash: str
    rank: int

    def predict(self, rows, desc: str) -> tuple[np.ndarray, int]:
        """Predicted label ids of rows (and how many inputs were cut): each one's likeliest class."""
        inputs, truncated = classifier_inputs(self.lm, self.pattern, rows, self.settings.max_length)
        return self.method.head.predict(self.engine.module, inputs, self.lm.tokenizer.pad_token_id, self.verbalizers,
                                        self.settings.eval_batch_size, desc), truncated

    def batch_loss(self, sample: TrainingSample, batch):
        device = self.engine.device
        ids, mask = pad_batch([sample.examples[i] for i in batch], self.lm.tokenizer.pad_token_id, device)
        teacher = None if sample.teacher is None else sample.teacher[batch].to(device)
        return self.method.loss(self.engine.module, ids, mask, sample.targets[batch].to(device), self.verbalizers,
                                self.settings, teacher), mask

    def validate(self, validation, epoch: int, state: dict) -> None:
        """After an epoch: accuracy on the validation rows; the best epoch's weights kept (tag "best")."""
        history = state["validation"]
        if len(validation) and len(history) == epoch:  # a resumed run has the epochs before its step
            self.engine.eval()
            predicted, _ = self.predict(validation, f"validate epoch {epoch + 1}")
            self.engine.train()
            history.append(float((predicted == validation["label"].to_numpy()).mean()))
            if history[-1] > max(history[:-1], default=-1.0):
                save_checkpoint(self.engine, self.checkpoints, self.job_hash, self.rank, tag="best",
                                client_state={"epoch": epoch})

    def evaluate(self, splits: dict, keys: dict, labels: list[str], examples: int, work_dir: Path):
        """A record per split (and each example's prediction, for error analysis); the inputs cut per split."""
        records, truncated = [], {}
        for split, rows in splits.items():
            predicted, truncated[split] = self.predict(rows, f"evaluate {split}")
            records.append(classification_record(dict(keys, split=split, layer=None, prompt=self.pattern.name,
                                                      examples=examples), labels, rows["label"].to_numpy(),
                                                 predicted, group_columns(rows, rows["id"])))
            if self.rank == 0:
                write_parquet(pa.table({"id": rows["id"].tolist(), "label": rows["label"].tolist(),
                                        "prediction": predicted.tolist()}), work_dir / f"predictions_{split}.parquet")
        return records, truncated


def run_finetune(model_dir: str, task: dict, train_path: str, eval_paths: dict[str, str], out: str,
                 settings: Settings, keys: dict, work_dir: str, ds_config_path: str,
                 teacher_path: str | None = None) -> dict | None:
    """Train one cell and evaluate it; rank 0 writes the metrics file. Returns the result on rank 0."""
    import deepspeed

    rank, world = init_distributed()
    method, cost, work = checked_method(model_dir, keys), Cost(), Path(work_dir)
    torch.manual_seed(keys["seed"])
    pattern = task_pattern(task, settings.pattern)
    tokens = load_tokens(model_dir)
    if method.head.verbalizer is not None:  # refused where the tokenizer cannot tell the labels apart
        check_verbalizers(tokens, [pattern], first_token=method.head.verbalizer == "first")
    lm, model = build_model(model_dir, keys["method"], len(task["labels"]), settings, tokens)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # before ZeRO-3 partitions them
    sample = TrainingSample.read(train_path, lm, pattern, method, settings, keys["seed"], teacher_path)
    evals = {split: read_table(path, META_KEY) for split, path in eval_paths.items()}
    fingerprints = [sample.meta["fingerprint"]] + [meta["fingerprint"] for _, meta in evals.values()]
    accum, order_length, total_steps = schedule(len(sample.examples), settings, world)
    dtype = precision(settings.precision)
    config = deepspeed_config(ds_config_path, settings, method.learning_rate(settings), accum, total_steps, dtype)
    job_hash = own_checkpoints(work / "checkpoints", {
        "settings": {k: v for k, v in settings.raw.items() if k not in FINETUNE_RUN_SETTINGS}, "keys": keys,
        "data": fingerprints, "world": world, "teacher": sample.teacher_meta}, rank)
    engine, *_ = deepspeed.initialize(model=model, config=config,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    trainee = Trainee(engine, lm, method, pattern, [lm.encode(pattern.verbalizer[label]) for label in task["labels"]],
                      settings, work / "checkpoints", job_hash, rank)
    train_start = time.time()
    state = train_epochs(engine, np.array([len(example) for example in sample.examples]), order_length, settings,
                         keys["seed"], rank, world, accum, trainee.checkpoints, job_hash,
                         lambda batch: trainee.batch_loss(sample, batch), {"validation": []},
                         after_epoch=lambda epoch, state: trainee.validate(sample.validation, epoch, state))
    train_seconds = time.time() - train_start
    history = state["validation"]
    best_epoch = int(np.argmax(history)) if history else None  # the first of equally good epochs
    if best_epoch is not None and best_epoch < len(history) - 1:
        engine.load_checkpoint(str(trainee.checkpoints), tag="best")
    engine.eval()
    splits = {"train": sample.train, "validation": sample.validation} if len(sample.validation) else {}
    splits |= {split: rows for split, (rows, _) in evals.items()}
    teacher_shots = sample.teacher_meta["shots"] if sample.teacher_meta else 0
    records, truncated_eval = trainee.evaluate(splits, keys, task["labels"], len(sample.rows) + teacher_shots, work)
    details = dict(training_summary(state, accum, total_steps, train_seconds), micro_steps=state["micro_step"],
                   train_tokens_per_s=round(state["tokens"] * world / max(train_seconds, 1e-9), 1), world_size=world,
                   effective_batch=settings.effective_batch, validation_accuracy_per_epoch=history,
                   trainable_parameters=trainable, zero_stage=config["zero_optimization"]["stage"], precision=dtype,
                   truncated_train_inputs=sample.truncated, truncated_eval_inputs=truncated_eval,
                   lr=method.learning_rate(settings), saved=_save(engine, lm, method, work, settings),
                   best_epoch=None if best_epoch is None else best_epoch + 1, teacher=sample.teacher_meta)
    for record in records:
        record["details"] = details
    if rank == 0 and not settings.keep_checkpoint and trainee.checkpoints.exists():
        shutil.rmtree(trainee.checkpoints)  # the run finished; checkpoints only serve a restart
    result = finish(records, cost.as_dict(train_tokens_per_s=details["train_tokens_per_s"]),
                    provenance(settings.raw, lm.info["revision"], fingerprints))
    if rank == 0:
        write_json(result, out)
    torch.distributed.barrier()
    return result if rank == 0 else None


def training_summary(state: dict, accum: int, total_steps: int, seconds: float) -> dict:
    """train_epochs' state as the metrics of finetune and instruct report it: optimizer steps, each one's loss,
    time and padding."""
    losses = state["losses"]
    return {"optimizer_steps": -(-state["micro_step"] // accum), "planned_optimizer_steps": total_steps,
            "resumed_from_micro_step": state["resumed_from"],
            "loss_per_step": [float(np.mean(losses[i: i + accum])) for i in range(0, len(losses), accum)],
            "train_seconds": round(seconds, 3), "accumulation_steps": accum,
            "train_padding_share": round(1 - state["tokens"] / max(state["padded"], 1), 4)}


def train_epochs(engine, lengths: np.ndarray, order_length: int, settings: Settings, seed: int, rank: int, world: int,
                 accum: int, checkpoints: Path, job_hash: str, batch_loss, extra: dict | None = None,
                 after_epoch=None) -> dict:
    """The training loop of finetune and instruct: settings.epochs epochs of length-grouped micro-batches;
    batch_loss(indices) -> (loss, attention mask). A checkpoint every settings.checkpoint_every optimizer
    steps holds the loop's state (micro-step, losses, token counts, `extra`, the RNG); a run that finds one
    resumes exactly (the same dropout masks and loss curve as one run). after_epoch(epoch, state) runs after each
    epoch. Returns the state, with `resumed_from` (the micro-step it resumed at, or None)."""
    state = {"micro_step": 0, "losses": [], "tokens": 0, "padded": 0} | (extra or {})
    resumed_from = None
    if (checkpoints / "latest").exists():
        _, client = engine.load_checkpoint(str(checkpoints))
        state.update({key: client[key] for key in state if key in client})
        resumed_from = client["micro_step"]
        torch.set_rng_state(client["rng"])
        if client["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(client["cuda_rng"])
    start, micro = state["micro_step"], 0
    for epoch in range(settings.epochs):
        for batch in epoch_batches(lengths, order_length, seed, epoch, rank, world, settings.batch_size):
            if micro < start:
                micro += 1
                continue
            loss, mask = batch_loss(batch)
            engine.backward(loss)
            engine.step()
            state["losses"].append(loss.item())
            state["tokens"] += int(mask.sum())
            state["padded"] += mask.numel()
            micro += 1
            state["micro_step"] = micro
            if micro % accum == 0 and (micro // accum) % settings.checkpoint_every == 0:
                save_checkpoint(engine, checkpoints, job_hash, rank, client_state=dict(
                    state, rng=torch.get_rng_state(),
                    cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None))
        if after_epoch:
            after_epoch(epoch, state)
    return dict(state, resumed_from=resumed_from)


def save_checkpoint(engine, checkpoints: Path, job_hash: str, rank: int, tag: str | None = None,
                    client_state: dict | None = None) -> None:
    """A resumable checkpoint (tag None: the one `latest` names) or the best epoch's weights (tag "best"), marked
    with the job that wrote it."""
    engine.save_checkpoint(str(checkpoints), tag=tag, client_state=client_state, save_latest=tag is None)
    if rank == 0:
        write_json({"job_hash": job_hash}, checkpoints / JOB_FILE)


def _save(engine, lm, method: Method, work_dir: Path, settings: Settings) -> str | None:
    """LoRA adapters are always kept (small); full weights only with save_model."""
    if method.lora:
        import deepspeed

        target = work_dir / "adapter"
        params = [p for p in engine.module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if torch.distributed.get_rank() == 0:
                engine.module.save_pretrained(target)
        return str(target)
    if settings.save_model:
        target = work_dir / "model"
        engine.save_16bit_model(str(target), "pytorch_model.bin")  # gathers ZeRO-3 partitions
        if torch.distributed.get_rank() == 0:
            engine.module.config.save_pretrained(target)
            lm.tokenizer.save_pretrained(target)
        return str(target)
    return None


def run_classifier(name: str, base_dir: str, task: dict, train_path: str, eval_paths: dict[str, str],
                   settings: Settings, keys: dict, work_dir: str, ds_config_path: str, out_model: str,
                   metrics_path: str) -> dict | None:
    """A derived classifier (derive: classifier, e.g. a PPO reward model): the base fine-tuned by method `head`
    on a task's training sample and evaluated like any fine-tuning cell (metrics_path), then written as a model
    folder with its head, the task's label names and the pattern its inputs were framed by (a reward frames texts
    the same way)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .derived import derived_record, save_derived

    result = run_finetune(base_dir, task, train_path, eval_paths, metrics_path, settings.updated(save_model=True),
                          keys, work_dir, ds_config_path)
    if result is None:  # not rank 0
        return None
    saved = Path(result["records"][0]["details"]["saved"])
    model = AutoModelForSequenceClassification.from_pretrained(saved, dtype="auto")
    model.config.id2label = dict(enumerate(task["labels"]))
    model.config.label2id = {label: i for i, label in enumerate(task["labels"])}
    pattern = task_pattern(task, settings.pattern)
    data_fingerprint = result["records"][0]["provenance"]["data_fingerprint"]
    record = derived_record(name, "classifier", model_record(base_dir), settings.raw, data_fingerprint)
    record["pattern"] = asdict(pattern)
    save_derived(model, AutoTokenizer.from_pretrained(saved), out_model, record)
    shutil.rmtree(saved)  # now in out_model
    return result
