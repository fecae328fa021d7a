"""The training loop that finetune and instruct share: DeepSpeed's process group (torchrun's, or one process over
a file store), the config of a job (its ZeRO file, batch, AdamW, warmup-decay schedule, precision), the schedule of
micro-batches, length-grouped batches, and checkpoints that resume a killed job exactly and belong to the job that
wrote them.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, fingerprint
from .io import write_json, write_text
from .settings import Settings


def slurm_ranks(environ: dict) -> dict[str, str]:
    """What torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*), read from a task that srun started, one
    of several: rank 0 listens on the node srun ran on (the job's first, where its first tasks go), at a port of
    the job's own so that two jobs sharing that node do not meet. Nothing outside srun's tasks."""
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1")))
    if "WORLD_SIZE" in environ or "SLURM_STEP_ID" not in environ or tasks < 2:
        return {}
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(tasks), "LOCAL_RANK": environ["SLURM_LOCALID"],
            "MASTER_ADDR": environ["SLURM_LAUNCH_NODE_IPADDR"],
            "MASTER_PORT": str(20000 + int(environ["SLURM_JOB_ID"]) % 20000)}


def init_distributed() -> tuple[int, int]:
    """Join the process group that torchrun, the deepspeed launcher or srun describe (RANK, WORLD_SIZE, MASTER_*;
    srun's SLURM_* as slurm_ranks reads them), or, alone, create a one-process group over a file store: no TCP
    port, so concurrent jobs cannot collide."""
    import deepspeed

    os.environ.update(slurm_ranks(os.environ))
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


def rank_share(n: int, rank: int, world: int) -> list[int]:
    """The items (of n) a rank predicts: every world-th from its own index, its last repeated until it has as many
    as the first rank (under ZeRO-3 every forward is a collective of all ranks: each must run as many batches)."""
    mine = list(range(rank, n, world))
    return mine + [mine[-1] if mine else 0] * (math.ceil(n / world) - len(mine)) if n else []


def gather_shares(share: list[int], values: np.ndarray, n: int, world: int) -> np.ndarray:
    """Every rank's values of its rank_share, put in the items' order, on every rank."""
    if world == 1:
        return values
    shares = [None] * world
    torch.distributed.all_gather_object(shares, (share, values.tolist()))
    out = np.empty(n, dtype=values.dtype)
    for indices, gathered in shares:
        out[indices] = gathered
    return out


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


def deepspeed_config(base_path: str, settings: Settings, lr: float, accum: int, total_steps: int, dtype: str,
                     monitor: Path | None = None) -> dict:
    """The DeepSpeed config of a training job (finetune, instruct): the ZeRO file with batch, AdamW, warmup-decay
    schedule and precision, and DeepSpeed's CSV monitor writing into `monitor` (monitor_config)."""
    config = json.loads(Path(base_path).read_text())
    if monitor is not None:
        config.update(monitor_config(monitor))
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


def monitor_config(folder: Path) -> dict:
    """DeepSpeed's own monitor, as CSV (no package beyond DeepSpeed): every optimizer step's loss and learning
    rate in folder/train/*.csv (Train_Samples_train_loss.csv: step, value), plotted by any CSV reader."""
    return {"csv_monitor": {"enabled": True, "output_path": str(folder), "job_name": "train"}}


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
            if micro % accum == 0 and engine.monitor.enabled and rank == 0:  # the optimizer step's loss
                engine.monitor.write_events([("Train/Samples/train_loss", float(np.mean(state["losses"][-accum:])),
                                              engine.global_samples)])
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
    with the job that wrote it. `latest` names a checkpoint once every rank has written its shards (DeepSpeed's
    own is written by rank 0 before the others finish theirs), so a job killed meanwhile resumes from the one
    before, on any nodes."""
    resumable, tag = tag is None, tag or f"global_step{engine.global_steps}"
    engine.save_checkpoint(str(checkpoints), tag=tag, client_state=client_state, save_latest=False)
    torch.distributed.barrier()
    if rank == 0:
        if resumable:
            write_text(tag, checkpoints / "latest")
        write_json({"job_hash": job_hash}, checkpoints / JOB_FILE)
