"""The cost model the preflight plans with (and benchmarks/gpu.py checks on a GPU): a model's shape read from its
config.json on the meta device, the FLOPs of inference and of training, bytes on one GPU for training under ZeRO
and for inference. The jobs count their own work with the same functions, so that the calibration compares the
preflight's prediction and a job's measurement in one unit."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .methods import BYTES_16BIT, METHODS
from .models import checkpoint_class


def model_shape(folder: str | Path, lora: dict | None = None) -> dict:
    """Parameters, layers, hidden size of a prepared model (instantiated on the meta device: no weights read),
    and the parameters LoRA adds with the config's target modules."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    cls = checkpoint_class(config)
    with torch.device("meta"):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    params = sum(p.numel() for p in model.parameters())
    lora_params = 0
    if lora:
        for name, module in model.named_modules():  # a projection: Linear, or GPT-2's Conv1D (weight [in, out])
            weight = getattr(module, "weight", None)
            if name.split(".")[-1] in lora["target_modules"] and weight is not None and weight.dim() == 2:
                lora_params += lora["r"] * sum(weight.shape)
    text = config.get_text_config()
    return {"parameters": params, "lora_parameters": lora_params, "layers": text.num_hidden_layers,
            "hidden": text.hidden_size, "heads": text.num_attention_heads}


def inference_flops(parameters: int, tokens: int) -> float:
    """A forward pass over `tokens` tokens: 2 FLOPs a token and parameter (extract, icl, the teacher)."""
    return 2.0 * parameters * tokens


def training_flops(parameters: int, per_token: int, epochs: int, trained: int, validated: int = 0,
                   evaluated: int = 0) -> float:
    """A training job: each epoch trains on `trained` tokens (per_token FLOPs a token and parameter:
    methods.Method.flops_per_token) and validates `validated` ones (a forward); then forwards over `evaluated`."""
    return parameters * ((per_token * trained + 2 * validated) * epochs + 2 * evaluated)


def activation_bytes(shape: dict, batch: int, tokens: int, checkpointing: bool) -> float:
    """Training activations of a transformer in 16-bit (Korthikanti et al. 2022: 34·s·b·h + 5·a·s²·b bytes per
    layer); with gradient checkpointing, one layer's worth plus a kept input per layer."""
    per_layer = tokens * batch * shape["hidden"] * 34 + 5 * shape["heads"] * tokens ** 2 * batch
    if checkpointing:
        return per_layer + shape["layers"] * tokens * batch * shape["hidden"] * BYTES_16BIT
    return per_layer * shape["layers"]


def training_memory(shape: dict, method: str, settings, zero_stage: int, offload: bool, gpus: int,
                    tokens: int) -> float:
    """Bytes on one GPU: the method's weights, gradients and optimizer states (methods.Method.state_bytes) and
    the training activations of a micro-batch of `tokens`-long inputs (settings: finetune's or instruct's)."""
    return (METHODS[method].state_bytes(shape, zero_stage, offload, gpus) +
            activation_bytes(shape, settings.batch_size, tokens, settings.gradient_checkpointing))


INTERNODE_GB_PER_S = 25  # a node's link when preflight.internode_gb_per_s is unset: InfiniBand HDR, 200 Gb/s


def internode_bytes(shape: dict, method: str, zero_stage: int, nodes: int, ranks: int, trained_batches: int,
                    forward_batches: int) -> float:
    """Bytes a training job moves through each node's link to the others when its ranks span nodes (none on one
    node: NVLink inside it is an order faster, left out). For each micro-batch of a rank, ZeRO-3 all-gathers the
    16-bit parameters for the forward and again for the backward, and every stage reduce-scatters the trained
    parameters' gradients; a forward alone (validation, evaluation) gathers once. A ring passes (ranks - 1) /
    ranks of each collective's data through every link. The preflight adds its time to the compute's (DeepSpeed
    overlaps some of it: an upper bound, until a calibration measures the job)."""
    if nodes < 2:
        return 0.0
    gathered = shape["parameters"] if zero_stage == 3 else 0
    per_trained_batch = 2 * gathered + METHODS[method].trained_parameters(shape)
    return BYTES_16BIT * (trained_batches * per_trained_batch + forward_batches * gathered) * (ranks - 1) / ranks


def inference_memory(shape: dict, batch: int, tokens: int, gpus: int = 1) -> float:
    """Bytes on each GPU of `gpus` that a model is spread over (models.load_model: spread): its share of the
    16-bit weights and of the batch's key/value cache (both divide with the layers), and a layer's working
    activations (whole on whichever GPU works)."""
    kv = 2 * shape["layers"] * shape["hidden"] * tokens * batch * BYTES_16BIT
    return (BYTES_16BIT * shape["parameters"] + kv) / max(gpus, 1) + 16 * batch * tokens * shape["hidden"]



@dataclass(frozen=True)
class Zero:
    """The grid's DeepSpeed config (finetune.zero), as the memory model reads it."""

    name: str
    stage: int
    offload: bool

    @classmethod
    def of(cls, config: dict) -> Zero:
        name = config["finetune"]["zero"]
        zero = json.loads((Path(__file__).resolve().parents[2] / "config/deepspeed" / f"{name}.json").read_text())
        return cls(name, zero["zero_optimization"]["stage"], "offload_param" in zero["zero_optimization"])

    def too_big(self, plan, memory_on, model: str, layout: tuple[int, int], what: str, batch_key: str) -> list[str]:
        """An error where a training job's memory per GPU (memory_on(ranks) bytes) exceeds a GPU's on its layout
        (nodes, processes on each), naming the fewest nodes that would hold it, if any does (up to 64)."""
        limit, (nodes, per_node) = plan.cluster["gpu_memory_gb"], layout
        memory = memory_on(nodes * per_node)
        if memory / 1e9 <= limit:
            return []
        fewest = next((n for n in range(nodes + 1, 65) if memory_on(n * per_node) / 1e9 <= limit), None)
        on = f"{nodes * per_node} GPU(s)" + (f" on {nodes} nodes" if nodes > 1 else "")
        remedy = (f"set models.{model}.nodes: {fewest} (about {memory_on(fewest * per_node) / 1e9:.0f} GB per GPU), "
                  if fewest else "")
        return [f"models.{model}.gpus: {what} needs about {memory / 1e9:.0f} GB per GPU under {self.name} on {on}, "
                f"more than preflight.gpu_memory_gb ({limit}); {remedy}add GPUs, use zero3/zero3_offload, or lower "
                f"{batch_key}"]
