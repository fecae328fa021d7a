"""The `finetune` stage: DeepSpeed training of one method on one training sample, then evaluation.

Methods: head (a sequence-classification head), pattern (the LM head restricted to the verbalizer tokens),
lora_head / lora_pattern (peft LoRA adapters on either), distill (context distillation: the student sees the
input without demonstrations and learns the prompted teacher's label distribution, plus cross-entropy on the
gold labels). Always DeepSpeed (ZeRO-2/3, optional CPU offload; fp16 or bf16 on GPUs, fp32 or bf16 on CPU);
one process or many (torchrun / the deepspeed launcher set RANK and WORLD_SIZE). Checkpoints every N optimizer
steps; a killed run resumes from the last one when started again.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from .forward import out_of_memory, pad_batch, release_memory
from .config import FINETUNE_RUN_SETTINGS, ConfigError
from .io import read_table, write_json, write_parquet
from .methods import METHODS, Method, folder_kind, kind_refusal
from .costs import model_shape, training_flops
from .metrics import Cost, classification_record, finish, group_columns, provenance, write_cost
from .models import load_model, load_tokens, model_record
from .prompt import check_verbalizers, classifier_inputs, task_pattern
from .sample import META_KEY, validation_split
from .settings import Settings
from .training import (deepspeed_config, gather_shares, init_distributed, own_checkpoints, precision, rank_share,
                       save_checkpoint, schedule, train_epochs, training_summary)


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


def checked_cell(model_dir: str, task: dict, settings: Settings, keys: dict):
    """(method, pattern, tokens) of a cell: the method checked against the model's kind and the pattern against
    its tokenizer, before any weights load."""
    method, pattern = checked_method(model_dir, keys), task_pattern(task, settings.pattern)
    tokens = load_tokens(model_dir)
    if method.head.verbalizer is not None:  # refused where the tokenizer cannot tell the labels apart
        check_verbalizers(tokens, [pattern], first_token=method.head.verbalizer == "first")
    return method, pattern, tokens


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
    validation_tokens: int  # the validation inputs' tokens: a forward over them after every epoch
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
        validation_tokens = sum(map(len, classifier_inputs(lm, pattern, validation, settings.max_length)[0]))
        teacher, teacher_meta = None, None
        if method.teacher:
            if teacher_path is None:
                raise ConfigError("a distillation method needs the teacher's label distribution (--teacher)")
            teacher_rows, teacher_meta = read_table(teacher_path, "lmadapt")
            teacher_rows = teacher_rows.set_index("id").loc[train["id"]]
            teacher = torch.tensor(np.stack(teacher_rows["probs"].to_numpy()), dtype=torch.float32)
        return cls(rows, train, validation, examples, truncated, validation_tokens,
                   torch.tensor(train["label"].to_numpy()), teacher, teacher_meta, meta)


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
    world: int

    def predict(self, rows, desc: str) -> tuple[np.ndarray, int, int]:
        """Predicted label ids of rows (and how many inputs were cut, and their tokens): each one's likeliest
        class. Each of several processes predicts its share of the rows (rank_share), and all gather them."""
        inputs, truncated = classifier_inputs(self.lm, self.pattern, rows, self.settings.max_length)
        share = rank_share(len(inputs), self.rank, self.world)
        predicted = self.method.head.predict(self.engine.module, [inputs[i] for i in share],
                                             self.lm.tokenizer.pad_token_id, self.verbalizers,
                                             self.settings.eval_batch_size, desc)
        return gather_shares(share, predicted, len(inputs), self.world), truncated, sum(map(len, inputs))

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
            predicted, _, _ = self.predict(validation, f"validate epoch {epoch + 1}")
            self.engine.train()
            history.append(float((predicted == validation["label"].to_numpy()).mean()))
            if history[-1] > max(history[:-1], default=-1.0):
                save_checkpoint(self.engine, self.checkpoints, self.job_hash, self.rank, tag="best",
                                client_state={"epoch": epoch})

    def evaluate(self, splits: dict, keys: dict, labels: list[str], examples: int, work_dir: Path):
        """A record per split (and each example's prediction, for error analysis); the inputs cut per split; the
        tokens evaluated."""
        records, truncated, tokens = [], {}, 0
        for split, rows in splits.items():
            predicted, truncated[split], split_tokens = self.predict(rows, f"evaluate {split}")
            tokens += split_tokens
            records.append(classification_record(dict(keys, split=split, layer=None, prompt=self.pattern.name,
                                                      examples=examples), labels, rows["label"].to_numpy(),
                                                 predicted, group_columns(rows, rows["id"])))
            if self.rank == 0:
                write_parquet(pa.table({"id": rows["id"].tolist(), "label": rows["label"].tolist(),
                                        "prediction": predicted.tolist()}), work_dir / f"predictions_{split}.parquet")
        return records, truncated, tokens


def run_finetune(model_dir: str, task: dict, train_path: str, eval_paths: dict[str, str], out: str,
                 settings: Settings, keys: dict, work_dir: str, ds_config_path: str,
                 teacher_path: str | None = None) -> dict | None:
    """Train one cell and evaluate it; rank 0 writes the metrics file. Returns the result on rank 0."""
    rank, world = init_distributed()
    cost, work = Cost(), Path(work_dir)
    method, pattern, tokens = checked_cell(model_dir, task, settings, keys)
    sample = TrainingSample.read(train_path, tokens, pattern, method, settings, keys["seed"], teacher_path)
    evals = {split: read_table(path, META_KEY) for split, path in eval_paths.items()}
    fingerprints = [sample.meta["fingerprint"]] + [meta["fingerprint"] for _, meta in evals.values()]
    job = {"keys": keys, "data": fingerprints, "world": world, "teacher": sample.teacher_meta}

    def train(trial: Settings):  # each try on a fresh model: one that ran out of memory leaves nothing behind
        torch.manual_seed(keys["seed"])
        lm, model = build_model(model_dir, keys["method"], len(task["labels"]), trial, tokens)
        cost.loaded()
        return train_cell(trial, job, sample, lm, model, method, pattern, task["labels"], work, ds_config_path, rank)

    fit = train_halving(train, settings, world)
    best_epoch = fit.restore_best()
    splits = {"train": sample.train, "validation": sample.validation} if len(sample.validation) else {}
    splits |= {split: rows for split, (rows, _) in evals.items()}
    teacher_shots = sample.teacher_meta["shots"] if sample.teacher_meta else 0
    records, truncated_eval, evaluated = fit.trainee.evaluate(splits, keys, task["labels"],
                                                              len(sample.rows) + teacher_shots, work)
    details = dict(fit.summary(), effective_batch=settings.effective_batch,
                   validation_accuracy_per_epoch=fit.state["validation"], trainable_parameters=fit.trainable,
                   truncated_train_inputs=sample.truncated, truncated_eval_inputs=truncated_eval,
                   lr=method.learning_rate(settings), saved=_save(fit.engine, fit.trainee.lm, method, work,
                                                                   fit.trainee.settings),
                   best_epoch=best_epoch, teacher=sample.teacher_meta)
    for record in records:
        record["details"] = details
    if rank == 0 and not settings.keep_checkpoint and fit.trainee.checkpoints.exists():
        shutil.rmtree(fit.trainee.checkpoints)  # the run finished; checkpoints only serve a restart
    spent = finetune_cost(cost, model_dir, method, fit.trainee.settings, sample, evaluated, world,
                          train_tokens_per_s=details["train_tokens_per_s"])
    result = finish(records, spent, provenance(settings.raw, fit.trainee.lm.info["revision"], fingerprints))
    if rank == 0:
        write_json(result, out)
        write_cost("finetune", out, spent)
    torch.distributed.barrier()
    return result if rank == 0 else None


def train_halving(train, settings: Settings, world: int) -> Fitted:
    """train(settings): a cell's training; where a micro-batch runs out of memory in a one-process job, the
    micro-batch halves (the accumulation doubles: each optimizer step still sums the effective batch) and training
    starts again, from the beginning. On several processes it fails the job (a rank cannot leave the others'
    collectives): a retry of the job asks for more memory."""
    trial = settings
    while True:
        try:
            return train(trial)
        except (RuntimeError, MemoryError) as error:
            if world > 1 or trial.batch_size == 1 or not out_of_memory(error):
                raise
        release_memory()  # out of the handler: its traceback no longer holds the failed try's engine
        micro = trial.batch_size // 2 if trial.batch_size % 2 == 0 else 1
        print(f"out of memory on a micro-batch of {trial.batch_size}: training again with {micro}", flush=True)
        trial = settings.updated(batch_size=micro)


@dataclass
class Fitted:
    """A cell trained under DeepSpeed: its engine, what scores it, the training loop's state and schedule."""

    engine: object
    trainee: Trainee
    state: dict
    accum: int
    total_steps: int
    config: dict
    seconds: float
    trainable: int  # parameters the optimizer updates

    def restore_best(self) -> int | None:
        """The weights of the best validated epoch (the first of equally good ones), where validation chose one
        before the last; the chosen epoch (1-based), or None without validation. The model is then evaluated."""
        history = self.state["validation"]
        best = int(np.argmax(history)) if history else None
        if best is not None and best < len(history) - 1:
            self.engine.load_checkpoint(str(self.trainee.checkpoints), tag="best")
        self.engine.eval()
        return None if best is None else best + 1

    def summary(self) -> dict:
        """How the training ran, for the record: steps, losses, time, the micro-batch it ended with, ZeRO."""
        world = torch.distributed.get_world_size()
        return dict(training_summary(self.state, self.accum, self.total_steps, self.seconds),
                    micro_steps=self.state["micro_step"], micro_batch=self.trainee.settings.batch_size,
                    train_tokens_per_s=round(self.state["tokens"] * world / max(self.seconds, 1e-9), 1),
                    world_size=world, zero_stage=self.config["zero_optimization"]["stage"],
                    precision=precision(self.trainee.settings.precision))


def train_cell(settings: Settings, job: dict, sample: TrainingSample, lm, model, method: Method, pattern,
               labels: list[str], work: Path, ds_config_path: str, rank: int) -> Fitted:
    """Train a cell under DeepSpeed: its checkpoints are the job's (settings, cell, data, processes:
    own_checkpoints)."""
    import deepspeed

    world = job["world"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # before ZeRO-3 partitions them
    accum, order_length, total_steps = schedule(len(sample.examples), settings, world)
    config = deepspeed_config(ds_config_path, settings, method.learning_rate(settings), accum, total_steps,
                              precision(settings.precision), monitor=work / "monitor")
    job_hash = own_checkpoints(work / "checkpoints", dict(job, settings={
        k: v for k, v in settings.raw.items() if k not in FINETUNE_RUN_SETTINGS}), rank)
    engine, *_ = deepspeed.initialize(model=model, config=config,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    trainee = Trainee(engine, lm, method, pattern, [lm.encode(pattern.verbalizer[label]) for label in labels],
                      settings, work / "checkpoints", job_hash, rank, world)
    start = time.time()
    try:
        state = train_epochs(engine, np.array([len(example) for example in sample.examples]), order_length, settings,
                             job["keys"]["seed"], rank, world, accum, trainee.checkpoints, job_hash,
                             lambda batch: trainee.batch_loss(sample, batch), {"validation": []},
                             after_epoch=lambda epoch, state: trainee.validate(sample.validation, epoch, state))
    except BaseException:
        engine.destroy()  # its hooks would keep it, its buffers and the model alive for the next try
        raise
    return Fitted(engine, trainee, state, accum, total_steps, config, time.time() - start, trainable)


def finetune_cost(cost: Cost, model_dir: str, method: Method, settings: Settings, sample: TrainingSample,
                  evaluated: int, world: int, **extra) -> dict:
    """The job's cost with its work as the preflight counts it: every epoch over the training inputs and a forward
    over the validation ones, then a forward over every evaluated split."""
    trained = sum(map(len, sample.examples))
    flops = training_flops(model_shape(model_dir)["parameters"], method.flops_per_token(
        settings.gradient_checkpointing), settings.epochs, trained, sample.validation_tokens, evaluated)
    return cost.as_dict(tokens=trained * settings.epochs + evaluated, flops=flops, batch_size=settings.batch_size,
                        gpus=world, **extra)


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
    write_cost("classifier", metrics_path, result["records"][0]["cost"])
    return result
