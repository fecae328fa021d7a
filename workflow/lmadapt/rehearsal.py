"""A rehearsal of a cluster grid on this machine: the same config with every model replaced by a tiny random
checkpoint in the hub's own layout and every hub dataset by local files in the hub export's layout.

Models: a tiny OPT (`pytorch_model.bin` only, as the facebook/opt-* main branches hold it; OPT's config keys and
`max_position_embeddings: 2048`), one per model of the grid, read through `fetch_model`'s local-folder path, which
converts it to safetensors like a hub download. Data: for every `hub:` source, a Parquet file with the hub
export's columns (the config's `columns` map read backwards), integer labels as the hub's ClassLabel encodes them,
ids and extra columns where the grid keeps them (HANS: heuristic, subcase, template), and text lengths drawn
around the real dataset's; the source stays a `hub:` source (the `parquet` builder of `datasets`, offline), so
the rehearsal runs the same rules and the same number of jobs as the grid with the same seeds. Rows: HANS keeps
its 30,000 (3 heuristics x 10 subcases x 1,000) unless `hans_rows` takes a stratified subset; the other sets keep
enough rows for every k, the demonstration pool and the test sample. A dataset or model the table below does not
know gets the generic shape, so a later grid entry joins the rehearsal without new code.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .config import ConfigError, check_config, is_local_model

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
HANS_HEURISTICS = ("lexical_overlap", "subsequence", "constituent")
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["th", "st", "ing", "er", "on", "an"]


def pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct lower-case words of 1-4 syllables: a byte-level BPE splits them about as often as English."""
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES, size=rng.integers(1, 5))))
    return [str(w) for w in rng.permutation(sorted(words))]


def texts(rng: np.random.Generator, vocabulary: list[str], n: int, mean: float, spread: float) -> list[str]:
    """n texts with log-normally distributed word counts around `mean`, words drawn Zipf-like."""
    weights = 1 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    lengths = np.maximum(1, rng.lognormal(np.log(mean) - spread ** 2 / 2, spread, size=n).round().astype(int))
    return [" ".join(rng.choice(vocabulary, size=length, p=weights)).capitalize() + "." for length in lengths]


def hub_table(source: dict, task: dict, rows: int, rng: np.random.Generator, vocabulary: list[str]) -> pd.DataFrame:
    """One split as the hub export has it: the config's `columns` read backwards, integer labels, extra columns."""
    shape = HUB_SHAPES.get(source["hub"], {})
    columns = source.get("columns") or {}
    frame = {}
    for field in task["fields"]:
        column = columns.get(field, field)
        mean, spread = shape.get("words", {}).get(column, GENERIC_SHAPE["words"])
        frame[column] = texts(rng, vocabulary, rows, mean, spread)
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


def build_model(folder: Path, texts_for_tokenizer: list[str], seed: int) -> Path:
    """A tiny random OPT in the hub's layout: config.json with OPT's keys, pytorch_model.bin, tokenizer files."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from .testing import build_tokenizer

    tokenizer = build_tokenizer(texts_for_tokenizer, vocab_size=1000)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       ffn_dim=128, max_position_embeddings=2048, word_embed_proj_dim=32,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = OPTForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    config.architectures = ["OPTForCausalLM"]
    config.save_pretrained(folder)
    # as on the hub: the base model's keys (decoder.*) in one pickle, the LM head tied to the embeddings
    torch.save(model.model.state_dict(), folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    return folder


def slice_grid(config: dict, seeds: int | None = None, models: list[str] | None = None,
               ks: list[int] | None = None, epochs: int | None = None) -> dict:
    """The grid cut down: its first `seeds` seeds, only `models`, only the k in `ks`, `epochs` of fine-tuning
    (a copy; the same cut applied to the real grid plans the same jobs as the rehearsal)."""
    config = copy.deepcopy(config)
    if epochs:
        config.setdefault("finetune", {})["epochs"] = epochs
    if seeds:
        config["seeds"] = config.get("seeds", [1])[:seeds]
    if models:
        unknown = sorted(set(models) - set(config.get("models", {})))
        if unknown:
            raise ConfigError(f"no model(s) {unknown} in the grid (it has {sorted(config.get('models', {}))})")
        config["models"] = {name: spec for name, spec in config["models"].items() if name in models}
        for stage in ("extract", "icl", "finetune"):
            if config.get(stage, {}).get("models"):
                config[stage]["models"] = [m for m in config[stage]["models"] if m in models]
    if ks:
        for task in config["tasks"].values():
            task["k"] = [k for k in task.get("k", [2, 32, 128]) if k in ks]
        if config.get("finetune", {}).get("k"):
            config["finetune"]["k"] = [k for k in config["finetune"]["k"] if k in ks]
    return config


def build_rehearsal(paper_path: str | Path, out: str | Path, seeds: int = 2, models: list[str] | None = None,
                    ks: list[int] | None = None, epochs: int | None = None, hans_rows: int | None = 3000) -> Path:
    """Write out/config.yaml (the grid, rehearsed, cut by slice_grid), out/models/ and out/data/; returns the
    config path."""
    paper = slice_grid(yaml.safe_load(Path(paper_path).read_text()), seeds, models, ks, epochs)
    checked = check_config(copy.deepcopy(paper), origin=str(paper_path))
    out = Path(out).resolve()
    rng = np.random.default_rng(0)
    vocabulary = pseudo_words(3000, rng)
    prompt_words = [p["template"] + " " + " ".join(p["verbalizer"].values())
                    for t in checked["tasks"].values() for p in t["prompt"]["patterns"].values()]
    config = copy.deepcopy(paper)
    config["threads"] = 1
    for name, task in config["tasks"].items():
        spec = checked["tasks"][name]
        sources = [(("data", role), s) for role, s in task.get("data", {}).items()]
        sources += [(("ood", role), s) for role, s in task.get("ood", {}).items()]
        for (kind, role), source in sources:
            if "hub" not in source:
                continue
            split = source.get("split", "train")
            rows = HUB_SHAPES.get(source["hub"], {}).get("rows", {}).get(split, GENERIC_SHAPE["rows"])
            if source["hub"] == "jhu-cogsci/hans" and hans_rows:
                rows = min(rows, hans_rows)
            path = out / "data" / name / f"{role}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            hub_table(source, spec, rows, rng, vocabulary).to_parquet(path, index=False)
            for key in ("revision", "hub_config"):
                source.pop(key, None)
            source.update(hub="parquet", data_files=str(path), split="train")
    corpus = texts(rng, vocabulary, 3000, 20, 0.5) + prompt_words * 50
    for i, (name, spec) in enumerate(sorted(config["models"].items())):
        if is_local_model(checked["models"][name]):
            continue  # a local or packaged model runs as it is
        folder = out / "models" / name
        if not (folder / "config.json").exists():
            build_model(folder, corpus, seed=i)
        config["models"][name] = {"id": str(folder), "gpus": spec.get("gpus", 1), "mem_mb": spec.get("mem_mb", 8000)}
    path = out / "config.yaml"
    path.write_text("# Written by `lmadapt rehearsal` from " + str(paper_path) + ": the grid with tiny models and "
                    "hub-shaped local data.\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    check_config(yaml.safe_load(path.read_text()), origin=str(path))
    return path
