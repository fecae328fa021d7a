"""The `sample` stage: class-balanced training samples of k per class, a fixed test sample, out-of-domain sets.

Deterministic: the same source rows, k and seed give byte-identical Parquet files. Samples are nested (for one
seed, the k=2 sample is part of the k=32 sample) so that a curve over k compares like with like. When a task has
no test split, the test sample is drawn from the training source first and removed from the training pool,
together with every training row whose text equals a test text.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa

from . import __version__
from .data import DataError, Split, read_split
from .io import file_sha256, write_parquet

META_KEY = "lmadapt"


def draw_rows(rows: pd.DataFrame, n: int | str | None, seed: int) -> pd.DataFrame:
    """n rows drawn without replacement (all rows for None/'all'), kept in source order."""
    if n in (None, "all") or n >= len(rows):
        return rows.reset_index(drop=True)
    chosen = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    return rows.iloc[chosen].reset_index(drop=True)


def training_pool(train: pd.DataFrame, test: pd.DataFrame | None, fields: list[str]) -> pd.DataFrame:
    """The training rows that may be sampled: without the test rows and without copies of their texts."""
    if test is None:
        return train
    test_texts = set(map(tuple, test[fields].to_numpy()))
    leaked = train["id"].isin(set(test["id"])) | pd.Series(
        [tuple(r) in test_texts for r in train[fields].to_numpy()], index=train.index)
    return train[~leaked].reset_index(drop=True)


def draw_balanced(pool: pd.DataFrame, labels: list[str], k: int, seed: int, where: str) -> pd.DataFrame:
    """k rows of every class, nested across k for one seed, then shuffled together."""
    parts = []
    for label_id, name in enumerate(labels):
        members = pool[pool["label"] == label_id]
        if len(members) < k:
            raise DataError(f"{where}: class {name!r} has {len(members)} example(s) available for training, "
                            f"fewer than k={k}")
        order = np.random.default_rng([seed, label_id]).permutation(len(members))
        parts.append(members.iloc[order[:k]])
    sample = pd.concat(parts)
    return sample.iloc[np.random.default_rng(seed).permutation(len(sample))].reset_index(drop=True)


def content_fingerprint(rows: pd.DataFrame) -> str:
    return hashlib.sha256(rows.to_json(orient="records", force_ascii=False).encode()).hexdigest()


def to_table(rows: pd.DataFrame, meta: dict) -> pa.Table:
    meta = dict(meta, n=len(rows), fingerprint=content_fingerprint(rows), lmadapt_version=__version__,
                class_counts=rows["label_name"].value_counts().sort_index().to_dict())
    table = pa.Table.from_pandas(rows, preserve_index=False)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})


def run_sample(task_name: str, task: dict, inputs: dict[str, str], split: str, out: str,
               k: int | None = None, seed: int | None = None, test_seed: int = 0) -> dict:
    """Write one sample file. split: 'train' (needs k and seed), 'test', or 'ood:<name>'."""
    fields, labels = task["fields"], task["labels"]

    def read(role: str, source: dict) -> Split:
        if role not in inputs:
            raise DataError(f"task {task_name}: no input file given for {role!r}")
        return read_split(source, inputs[role], fields, labels)

    def source_meta(s: Split) -> dict:
        return dict(s.description, sha256=file_sha256(s.path))

    meta = {"task": task_name, "split": split, "fields": fields, "labels": labels, "test_seed": test_seed}
    if split.startswith("ood:"):
        name = split.removeprefix("ood:")
        if name not in task["ood"]:
            raise DataError(f"task {task_name}: no out-of-domain set {name!r} (has {sorted(task['ood'])})")
        ood = read(split, task["ood"][name])
        rows = draw_rows(ood.rows, task["ood"][name].get("n"), test_seed)
        meta["sources"] = [source_meta(ood)]
    else:
        train = read("train", task["data"]["train"])
        if "test" in task["data"]:
            test_split = read("test", task["data"]["test"])
            test = draw_rows(test_split.rows, task["n_test"], test_seed)
            sources = [source_meta(test_split)]
        else:  # carve the test sample out of the single pool
            test = draw_rows(train.rows, task["n_test"], test_seed)
            sources = [source_meta(train)]
        if split == "test":
            rows = test
        elif split == "train":
            if k is None or seed is None:
                raise ValueError("a training sample needs k and seed")
            carved = None if "test" in task["data"] else test
            rows = draw_balanced(training_pool(train.rows, carved, fields), labels, k, seed, str(train.path))
            sources = [source_meta(train)]
            meta.update(k=k, seed=seed)
        else:
            raise ValueError(f"unknown split {split!r}: train, test or ood:<name>")
        meta["sources"] = sources
    table = to_table(rows, meta)
    write_parquet(table, out)
    return json.loads(table.schema.metadata[META_KEY.encode()])
