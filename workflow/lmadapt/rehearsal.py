"""A rehearsal of a cluster grid on this machine: the same config with every model replaced by a tiny random
checkpoint in the hub's own layout and every hub dataset by local files in the hub export's layout.

Models: a tiny random model of each grid model's family (OPT, GPT-2, Flan-T5, RoBERTa: FAMILIES) with the hub's
config keys, context and weight files (`pytorch_model.bin` only for facebook/opt-*), read through `fetch_model`'s
local-folder path, which converts it to safetensors like a hub download; the model keeps its own stage settings.
Data: for every `hub:` source, a Parquet file with the hub export's columns (the config's `columns` map read
backwards), integer labels as the hub's ClassLabel encodes them, ids and extra columns where the grid keeps them
(HANS: heuristic, subcase, template), and text lengths drawn around the real dataset's; the source stays a `hub:`
source (the `parquet` builder of `datasets`, offline), so the rehearsal runs the same rules and the same number of
jobs as the grid with the same seeds. Rows: HANS keeps its 30,000 (3 heuristics x 10 subcases x 1,000) unless
`hans_rows` takes a stratified subset; the other sets keep enough rows for every k, the demonstration pool and the
test sample. A dataset or model the table below does not know gets the generic shape, so a later grid entry joins
the rehearsal without new code.
"""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .checks import check_config
from .config import MODEL_STAGES, ConfigError, stage_config
from .grid import derived_models
from .resources import is_local_model

# Hub datasets by name: rows per split in the rehearsal, words per text field (mean, spread) as in the real set.
HUB_SHAPES = {
    "stanfordnlp/imdb": {"rows": {"train": 1200, "test": 600}, "words": {"text": (230, 0.6)}},
    "nyu-mll/glue": {"rows": {"train": 2490, "validation": 277},
                     "words": {"sentence1": (43, 0.5), "sentence2": (9, 0.35)}},
    "jhu-cogsci/hans": {"rows": {"validation": 30000}, "words": {"premise": (9, 0.25), "hypothesis": (6, 0.25)}},
    "fancyzhx/ag_news": {"rows": {"train": 2000, "test": 1000}, "words": {"text": (38, 0.3)}},
    "mteb/tweet_sentiment_extraction": {"rows": {"train": 2000, "test": 1000}, "words": {"text": (13, 0.5)}},
}
GENERIC_SHAPE = {"rows": 1500, "words": (30, 0.5)}
# Hub corpora by name: rows, and words per column (mean, spread, share of empty values) as in the real set.
CORPUS_SHAPES = {
    "vicgalle/alpaca-gpt4": {"rows": 2000, "words": {"instruction": (13, 0.4, 0.0), "input": (10, 0.8, 0.6),
                                                     "output": (120, 0.7, 0.0), "text": (160, 0.6, 0.0)}},
    "knkarthick/dialogsum": {"rows": 1500, "words": {"id": (1, 0.0, 0.0), "dialogue": (130, 0.45, 0.0),
                                                     "summary": (22, 0.4, 0.0), "topic": (2, 0.3, 0.0)}},
}
# The labels of hub classifiers that score others (a ppo reward model), in their config's order.
CLASSIFIER_LABELS = {"facebook/roberta-hate-speech-dynabench-r4-target": ["nothate", "hate"]}
HANS_HEURISTICS = ("lexical_overlap", "subsequence", "constituent")
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["th", "st", "ing", "er", "on", "an"]


def pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct lower-case words of 1-4 syllables: a byte-level BPE splits them about as often as English."""
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES, size=rng.integers(1, 5))))
    return [str(w) for w in rng.permutation(sorted(words))]


def texts(rng: np.random.Generator, vocabulary: list[str], n: int, mean: float, spread: float,
          taken: set[str] | None = None) -> list[str]:
    """n texts with log-normally distributed word counts around `mean`, words drawn Zipf-like; none of them in
    `taken` (which they join), so that a task's splits share no text, as a leak-free dataset's do not."""
    weights = 1 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    lengths = np.maximum(1, rng.lognormal(np.log(mean) - spread ** 2 / 2, spread, size=n).round().astype(int))
    out = []
    for length in lengths:
        text = " ".join(rng.choice(vocabulary, size=length, p=weights)).capitalize() + "."
        while taken is not None and text in taken:  # a short text drawn twice: one word more
            text = text[:-1] + " " + str(rng.choice(vocabulary, p=weights)) + "."
        out.append(text)
        if taken is not None:
            taken.add(text)
    return out


def hub_table(source: dict, task: dict, rows: int, rng: np.random.Generator, vocabulary: list[str],
              taken: dict[str, set[str]]) -> pd.DataFrame:
    """One split as the hub export has it: the config's `columns` read backwards, integer labels, extra columns;
    its texts none of those `taken` (by field) by the task's other splits."""
    shape = HUB_SHAPES.get(source["hub"], {})
    columns = source.get("columns") or {}
    frame = {}
    for field in task["fields"]:
        column = columns.get(field, field)
        mean, spread = shape.get("words", {}).get(column, GENERIC_SHAPE["words"])
        frame[column] = texts(rng, vocabulary, rows, mean, spread, taken.setdefault(field, set()))
    n_labels = len(task["labels"])
    if source["hub"] == "jhu-cogsci/hans":  # 3 heuristics x 10 subcases, balanced labels within each
        cell = np.arange(rows) % 30
        frame["heuristic"] = [HANS_HEURISTICS[c // 10] for c in cell]
        frame["subcase"] = [f"{HANS_HEURISTICS[c // 10][:4]}_subcase_{c % 10}" for c in cell]
        frame["template"] = [f"temp{c % 10 + 1}" for c in cell]
        labels = (np.arange(rows) // 30) % 2
    else:
        labels = rng.integers(0, n_labels, size=rows)
    frame[columns.get("label", "label")] = labels.astype("int64")
    if "id" in columns:
        frame[columns["id"]] = np.arange(rows)
    for column in source.get("keep_columns") or []:
        frame.setdefault(column, [f"{column}_{i % 7}" for i in range(rows)])
    return pd.DataFrame(frame)


def corpus_table(source: dict, rows: int, rng: np.random.Generator, vocabulary: list[str]) -> pd.DataFrame:
    """A hub corpus as its export has it: its columns (CORPUS_SHAPES, or the config's `columns` and `text`)."""
    shape = CORPUS_SHAPES.get(source["hub"])
    words = shape["words"] if shape else {column: GENERIC_SHAPE["words"] + (0.0,) for column in
                                          set((source.get("columns") or {}).values()) | {"text"}}
    frame = {}
    for column, (mean, spread, empty) in words.items():
        values = texts(rng, vocabulary, rows, mean, spread)
        frame[column] = ["" if drop else value for value, drop in zip(values, rng.random(rows) < empty)]
    return pd.DataFrame(frame)


# Stand-ins by model family (the hub id names it; an unknown id gets an OPT): the hub's config keys and context
# (OPT 2,048 positions, GPT-2 1,024, Flan-T5's tokenizer 512, RoBERTa 514 after its padding index), its tokenizer's
# framing, and its weight files: the facebook/opt-* main branches hold pytorch_model.bin, gpt2's model.safetensors
# holds the base model's keys (both with the LM head tied), flan-t5-base and roberta-base hold the full model's.
FAMILIES = ("roberta", "gpt2", "t5", "opt")


def _opt(hidden: int, layers: int, heads: int, projection: int) -> dict:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=4 * hidden,
                word_embed_proj_dim=projection, vocab_size=50272)


# The sizes in the hub models' config.json: a stand-in keeps their ratios (stand_in_sizes), and benchmarks/preflight.py
# writes them over the stand-ins' configs to cost the real grid.
HUB_MODEL_SIZES = {
    "facebook/opt-125m": _opt(768, 12, 12, 768), "facebook/opt-350m": _opt(1024, 24, 16, 512),
    "facebook/opt-1.3b": _opt(2048, 24, 32, 2048), "facebook/opt-2.7b": _opt(2560, 32, 32, 2560),
    "facebook/opt-6.7b": _opt(4096, 32, 32, 4096), "facebook/opt-13b": _opt(5120, 40, 40, 5120),
    "facebook/opt-30b": _opt(7168, 48, 56, 7168),
    "openai-community/gpt2": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257),
    "google/flan-t5-base": dict(d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_decoder_layers=12, num_heads=12,
                                vocab_size=32128),
    "FacebookAI/roberta-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    intermediate_size=3072, vocab_size=50265),
}


def model_family(model_id: str) -> str:
    return next((family for family in FAMILIES if family in model_id.lower()), "opt")


def stand_in_sizes(model_id: str) -> dict:
    """The stand-in's layers, width and heads in the real model's ratios: a quarter of its layers, a 64th of its
    width, heads of a 16th of its head size (at least 4 wide), so that OPT-30B's stand-in is to OPT-125m's as
    the real models are in layers, width and weights per layer (the vocabulary stays the stand-in's). A model the
    table does not know gets the family's smallest stand-in."""
    from transformers import AutoConfig

    real = HUB_MODEL_SIZES.get(model_id)
    if real is None:
        return {}
    config = AutoConfig.for_model(model_family(model_id), **real)  # the family is its model_type
    head = max(config.hidden_size // config.num_attention_heads // 16, 4)
    heads = max(config.hidden_size // 64 // head, 1)
    return {"layers": max(config.num_hidden_layers // 4, 1), "hidden": heads * head, "heads": heads}


def build_model(folder: Path, model_id: str, texts_for_tokenizer: list[str], seed: int,
                labels: list[str] | None = None) -> Path:
    """A tiny random model of the hub id's family in the hub's layout: config.json, weights, tokenizer files;
    with `labels`, a sequence classifier with those labels (a reward model)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from .testing import build_tiny_bert, build_tiny_gpt2, build_tiny_opt, build_tiny_t5

    family = model_family(model_id)
    sizes = dict(texts=texts_for_tokenizer, seed=seed, vocab_size=1000, **stand_in_sizes(model_id))
    if labels:
        from transformers import AutoModelForSequenceClassification

        build_model(folder, model_id, texts_for_tokenizer, seed)
        classifier = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)})
        for stale in folder.glob("*.bin"):
            stale.unlink()
        classifier.save_pretrained(folder, safe_serialization=True)
        return folder
    if family == "t5":
        return build_tiny_t5(folder, **sizes)
    if family == "roberta":
        return build_tiny_bert(folder, roberta=True, **sizes)
    build = build_tiny_gpt2 if family == "gpt2" else partial(build_tiny_opt, max_positions=2048)
    build(folder, **({"layers": 2} | sizes))
    model = AutoModelForCausalLM.from_pretrained(folder)
    base = {key: value.contiguous() for key, value in model.base_model.state_dict().items()}
    (folder / "model.safetensors").unlink()
    if family == "gpt2":
        save_file(base, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(base, folder / "pytorch_model.bin")
    return folder


def stand_in(source: dict, table: pd.DataFrame, path: Path) -> None:
    """Write a hub source's stand-in table to path and point the source at it (a local parquet build)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    for key in ("revision", "hub_config"):
        source.pop(key, None)
    source.update(hub="parquet", data_files=str(path), split="train")


def slice_grid(config: dict, seeds: int | None = None, models: list[str] | None = None,
               ks: list[int] | None = None, epochs: int | None = None, ppo_steps: int | None = None,
               methods: list[str] | None = None) -> dict:
    """The grid cut down: its first `seeds` seeds, only `models`, only the k in `ks` (ICL: zero-shot and those
    numbers of demonstrations), `epochs` of fine-tuning and instruction tuning, `ppo_steps` PPO steps, only
    `methods` of the finetune section's (a model that names its own methods keeps them) (a copy; the same cut
    applied to the real grid plans the same jobs as the rehearsal)."""
    config = copy.deepcopy(config)
    for section, key, value in (("finetune", "epochs", epochs), ("instruct", "epochs", epochs),
                                ("ppo", "steps", ppo_steps)):
        if value:  # time, not shape: the same jobs, shorter
            config.setdefault(section, {})[key] = value
            for spec in config.get("models", {}).values():
                if key in spec.get(section, {}):
                    spec[section][key] = value
    if seeds:
        config["seeds"] = config.get("seeds", [1])[:seeds]
    if models:
        unknown = sorted(set(models) - set(config.get("models", {})))
        if unknown:
            raise ConfigError(f"no model(s) {unknown} in the grid (it has {sorted(config.get('models', {}))})")
        config["models"] = {name: spec for name, spec in config["models"].items() if name in models}
        for stage in MODEL_STAGES:
            selected = config.get(stage, {}).get("models")
            if selected:
                config[stage]["models"] = [m for m in selected if m in models]
                if not config[stage]["models"]:  # an empty selection would mean every model
                    raise ConfigError(f"the slice keeps none of {stage}.models {selected}; add one to --models")
    if methods:
        finetune = config.setdefault("finetune", {})
        kept = [m for m in finetune.get("methods", methods) if m in methods]
        if not kept:
            raise ConfigError(f"the slice keeps none of finetune.methods {finetune.get('methods')}; add one to "
                              f"--methods")
        finetune["methods"] = kept
    if ks:  # training samples of these k, and ICL with as many demonstrations (zero-shot needs no sample: kept)
        for task in config["tasks"].values():
            task["k"] = [k for k in task.get("k", [2, 32, 128]) if k in ks]
        for finetune in [config.get("finetune", {})] + [s.get("finetune", {}) for s in config["models"].values()]:
            if finetune.get("k"):
                finetune["k"] = [k for k in finetune["k"] if k in ks]
        for icl in [config.get("icl", {})] + [s.get("icl", {}) for s in config["models"].values()]:
            if icl.get("shots"):
                icl["shots"] = [n for n in icl["shots"] if n == 0 or n in ks]
    return config


def build_rehearsal(paper_path: str | Path, out: str | Path, seeds: int = 2, models: list[str] | None = None,
                    ks: list[int] | None = None, epochs: int | None = None, hans_rows: int | None = 3000,
                    ppo_steps: int | None = None, methods: list[str] | None = None) -> Path:
    """Write out/config.yaml (the grid, rehearsed, cut by slice_grid), out/models/ and out/data/; returns the
    config path."""
    paper = slice_grid(yaml.safe_load(Path(paper_path).read_text()), seeds, models, ks, epochs, ppo_steps, methods)
    checked = check_config(copy.deepcopy(paper), origin=str(paper_path))
    out = Path(out).resolve()
    rng = np.random.default_rng(0)
    vocabulary = pseudo_words(3000, rng)
    prompt_words = [p["template"] + " " + " ".join(p["verbalizer"].values())
                    for t in checked["tasks"].values() for p in t["prompt"]["patterns"].values()]
    config = copy.deepcopy(paper)
    config["threads"] = 1
    for name, task in config["tasks"].items():
        task_config = checked["tasks"][name]
        sources = [(("data", role), s) for role, s in task.get("data", {}).items()]
        sources += [(("ood", role), s) for role, s in task.get("ood", {}).items()]
        taken: dict[str, set[str]] = {}
        for (kind, role), source in sources:
            if "hub" not in source:
                continue
            split = source.get("split", "train")
            rows = HUB_SHAPES.get(source["hub"], {}).get("rows", {}).get(split, GENERIC_SHAPE["rows"])
            if source["hub"] == "jhu-cogsci/hans" and hans_rows:
                rows = min(rows, hans_rows)
            table = hub_table(source, task_config, rows, rng, vocabulary, taken)
            stand_in(source, table, out / "data" / name / f"{role}.parquet")
    for name, source in config.get("corpora", {}).items():
        if "hub" not in source:
            continue
        rows = CORPUS_SHAPES.get(source["hub"], {}).get("rows", GENERIC_SHAPE["rows"])
        stand_in(source, corpus_table(source, rows, rng, vocabulary), out / "data" / "corpora" / f"{name}.parquet")
    corpus = texts(rng, vocabulary, 3000, 20, 0.5) + prompt_words * 50
    # the reward models' labels: the label a PPO model's reward names, unless the hub model's are known
    rewards = {reward["model"]: reward for reward in (stage_config(checked, "ppo", m)["reward"]
                                                        for m in derived_models(checked, "ppo"))}
    for spec in config["models"].values():  # one machine: a model's nodes become one node of as many processes
        if spec.get("nodes", 1) > 1:
            spec["gpus"] = spec.get("gpus", 1) * spec.pop("nodes")
    for i, (name, spec) in enumerate(sorted(config["models"].items())):
        if checked["models"][name].get("derive") or is_local_model(checked["models"][name]):
            continue  # a derived model is trained by the run; a local or packaged one runs as it is
        folder = out / "models" / name
        model_id = checked["models"][name]["id"]
        if not (folder / "config.json").exists():
            reward = rewards.get(name)
            labels = reward and CLASSIFIER_LABELS.get(model_id, [reward.get("label") or reward.get("avoid"), "other"])
            build_model(folder, model_id, corpus, seed=i, labels=labels)
        source_keys = ("id", "revision", "package", "gguf_file")
        config["models"][name] = {"id": str(folder)} | {k: v for k, v in spec.items() if k not in source_keys}
    path = out / "config.yaml"
    path.write_text("# Written by `lmadapt rehearsal` from " + str(paper_path) + ": the grid with tiny models and "
                    "hub-shaped local data.\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    check_config(yaml.safe_load(path.read_text()), origin=str(path))
    return path
