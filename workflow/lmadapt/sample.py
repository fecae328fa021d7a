"""The `sample` stage: class-balanced training samples of k per class, a demonstration pool per seed, a fixed
test sample, out-of-domain sets.

Deterministic: the same source rows, k and seed give byte-identical Parquet files. Samples are nested (for one
seed, the k=2 sample is part of the k=32 sample) so that a curve over k compares like with like. Each class's
rows are put in one seeded order: training samples take its head, the demonstration pool its tail, so no prompt
shows a row that a probe or a fine-tuned model trains on, and adding a k changes neither. When a task has no test
split, the test sample is drawn from the training source first and removed from the training pool, together with
every training row whose text equals a test text.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from . import __version__
from .config import ConfigError
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


def normalised_texts(rows: pd.DataFrame, fields: list[str]) -> np.ndarray:
    """Each row's text as a leak check compares it: every field case-folded, whitespace collapsed."""
    return np.array(["\x1f".join(" ".join(str(value).split()).casefold() for value in values)
                     for values in rows[fields].to_numpy()], dtype=object)


def overlap_message(task_name: str, n: int, train_path, name: str, path) -> str:
    """The one wording of a leak between training and evaluation texts: the sample job's refusal, the workflow's
    start check (overlap_problems) and the preflight's check of the samples (name: the evaluation split)."""
    return (f"tasks.{task_name}: {n} training row(s) of {train_path} share their text with the {name} sample of "
            f"{path}; a test text in training leaks the answer. Remove them, or set tasks.{task_name}.overlap: drop "
            f"to leave them out of training")


def without_overlap(pool: pd.DataFrame, evaluations: dict[str, tuple[pd.DataFrame, str]], fields: list[str],
                    task_name: str, task: dict, train_path: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The training pool less every row that shares its text with an evaluation sample (name -> (rows, file)),
    and how many each one took: refused (naming both files and the count) unless tasks.<task>.overlap is drop."""
    pool_texts = normalised_texts(pool, fields)
    shared, dropped = np.zeros(len(pool), dtype=bool), {}
    for name, (rows, path) in evaluations.items():
        hits = np.isin(pool_texts, normalised_texts(rows, fields))
        if hits.any() and task.get("overlap") != "drop":
            raise DataError(overlap_message(task_name, int(hits.sum()), train_path, name, path))
        if hits.any():
            dropped[name] = int(hits.sum())
        shared |= hits
    return pool[~shared].reset_index(drop=True), dropped


def overlap_problems(task_name: str, task: dict, read: dict[str, Split], test_seed: int) -> list[str]:
    """What the sample jobs of a task would refuse, from its source files as read (role -> Split: train, test,
    ood:<name>) before any job: training rows sharing a text with the test sample of a separate test file or with
    an out-of-domain sample (none where the task drops them)."""
    if task.get("overlap") == "drop" or "train" not in read:
        return []
    pool = normalised_texts(training_pool(read["train"].rows, None, task["fields"]), task["fields"])
    problems = []
    for role, split in read.items():
        if role != "train":
            n = task["n_test"] if role == "test" else task["ood"][role.removeprefix("ood:")].get("n")
            sample = normalised_texts(draw_rows(split.rows, n, test_seed), task["fields"])
            shared = int(np.isin(pool, sample).sum())
            if shared:
                problems.append(overlap_message(task_name, shared, read["train"].path, role, split.path))
    return problems


def class_order(pool: pd.DataFrame, label_id: int, seed: int) -> pd.DataFrame:
    """The rows of one class in the seed's order: training samples take its head, demonstrations its tail."""
    members = pool[pool["label"] == label_id]
    return members.iloc[np.random.default_rng([seed, label_id]).permutation(len(members))]


def draw_balanced(pool: pd.DataFrame, labels: list[str], k: int | str, seed: int, where: str, task_key: str,
                  demonstrations: int = 0) -> pd.DataFrame:
    """k rows of every class, nested across k for one seed, then shuffled together; k "all": every row of the
    pool but the demonstrations (the full training set, not balanced). demonstrations: the pool size per class
    kept apart at the tail of each class's order (the training rows must not reach it). task_key: the task's
    config key (tasks.<name>), named in errors."""
    parts = []
    for label_id, name in enumerate(labels):
        members = class_order(pool, label_id, seed)
        if k == "all":
            parts.append(members.iloc[:len(members) - demonstrations])
            continue
        if len(members) < k + demonstrations:
            apart = f" besides the {demonstrations} kept for demonstrations" if demonstrations else ""
            keys = f"{task_key}.k" + (f" or {task_key}.demonstrations" if demonstrations else "")
            raise DataError(f"{where}: class {name!r} (label {label_id}) has {len(members)} example(s) available "
                            f"for training, fewer than k={k}{apart}; lower {keys}")
        parts.append(members.iloc[:k])
    sample = pd.concat(parts)
    return sample.iloc[np.random.default_rng(seed).permutation(len(sample))].reset_index(drop=True)


def draw_demonstrations(pool: pd.DataFrame, labels: list[str], per_class: int, seed: int, where: str,
                        task_key: str) -> pd.DataFrame:
    """The seed's demonstration pool: `per_class` rows of every class from the tail of its order (each training
    sample checks that its head stays clear of it), then shuffled together."""
    parts = []
    for label_id, name in enumerate(labels):
        members = class_order(pool, label_id, seed)
        if len(members) < per_class:
            raise DataError(f"{where}: class {name!r} (label {label_id}) has {len(members)} example(s), fewer than "
                            f"the {per_class} per class of the demonstration pool; lower {task_key}.demonstrations")
        parts.append(members.iloc[::-1].iloc[:per_class])
    sample = pd.concat(parts)
    return sample.iloc[np.random.default_rng([seed, len(labels)]).permutation(len(sample))].reset_index(drop=True)


def validation_split(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Which rows of a training sample are held out to validate on (study 2's 80/20: share 0.2): `share` of each
    label's rows (at least one, never all), drawn with the cell's seed; none for share 0."""
    rng = np.random.default_rng([seed, 80])
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels) if share else []:
        rows = np.flatnonzero(labels == label)
        held[rng.choice(rows, size=min(len(rows) - 1, max(1, round(share * len(rows)))), replace=False)] = True
    return held


def instruction_rows(rows: pd.DataFrame, task: dict) -> pd.DataFrame:
    """A task's rows as an instruction set in the Alpaca layout: the templates in turn as instructions, the text
    fields (one a line) as input, the label's answer as output."""
    instructions = task["instructions"]
    templates = instructions["templates"]
    return pd.DataFrame({
        "id": rows["id"].to_numpy(),
        "instruction": [templates[i % len(templates)] for i in range(len(rows))],
        "input": ["\n".join(values) for values in rows[task["fields"]].astype(str).to_numpy()],
        "output": [instructions["answers"].get(name, name) for name in rows["label_name"]],
        "label": rows["label"].to_numpy(), "label_name": rows["label_name"].to_numpy()})


def content_fingerprint(rows: pd.DataFrame) -> str:
    return hashlib.sha256(rows.to_json(orient="records", force_ascii=False).encode()).hexdigest()


def to_table(rows: pd.DataFrame, meta: dict) -> pa.Table:
    meta = dict(meta, n=len(rows), fingerprint=content_fingerprint(rows), lmadapt_version=__version__,
                class_counts=rows["label_name"].value_counts().sort_index().to_dict())
    table = pa.Table.from_pandas(rows, preserve_index=False)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})


@dataclass
class TaskFiles:
    """A task's input files as a sample job reads them (inputs: role -> path, the rule's inputs)."""

    name: str
    task: dict
    inputs: dict[str, str]
    test_seed: int

    def read(self, role: str, source: dict) -> Split:
        if role not in self.inputs:
            raise DataError(f"task {self.name}: no input file given for {role!r}")
        return read_split(source, self.inputs[role], self.task["fields"], self.task["labels"])

    def ood(self, name: str) -> tuple[pd.DataFrame, Split]:
        """An out-of-domain sample (its n rows drawn with the test seed) and its file."""
        if name not in self.task["ood"]:
            raise DataError(f"task {self.name}: no out-of-domain set {name!r} (has {sorted(self.task['ood'])})")
        source = self.task["ood"][name]
        ood = self.read(f"ood:{name}", source)
        return draw_rows(ood.rows, source.get("n"), self.test_seed), ood

    def leak_free_pool(self, train: Split, test: pd.DataFrame, test_file: str | None, carved: pd.DataFrame | None,
                       meta: dict) -> pd.DataFrame:
        """The training pool (less a carved test sample) less every row that shares a text with the test sample
        of a separate test file or, where the task drops overlaps, with an out-of-domain sample (its file is
        then an input of the job; otherwise the preflight compares the samples); rows dropped go in meta."""
        evaluations = {"test": (test, test_file)} if test_file else {}
        if self.task.get("overlap") == "drop":
            evaluations |= {f"ood:{name}": (rows, str(ood.path))
                            for name in self.task["ood"] for rows, ood in [self.ood(name)]}
        pool, dropped = without_overlap(training_pool(train.rows, carved, self.task["fields"]), evaluations,
                                        self.task["fields"], self.name, self.task, str(train.path))
        if dropped:
            meta["dropped_overlap"] = dropped
        return pool

    def in_domain(self, split: str, k: int | None, seed: int | None, meta: dict) -> tuple[pd.DataFrame, Split]:
        """A sample of the task's own data and the file it was drawn from: the test sample (a separate test
        file's, or carved out of the single pool), a training sample, a demonstration pool or instructions."""
        task, labels = self.task, self.task["labels"]
        if split not in ("test", "train", "demos", "instructions"):
            raise ConfigError(f"unknown split {split!r}: train, demos, test, instructions or ood:<name>")
        train = self.read("train", task["data"]["train"])
        separate = "test" in task["data"]
        test_split = self.read("test", task["data"]["test"]) if separate else train
        test = draw_rows(test_split.rows, task["n_test"], self.test_seed)
        test_file = str(test_split.path) if separate else None
        if split == "test":
            return test, test_split
        if split == "instructions":  # every training row may serve, never a test text (test_seed draws)
            pool = self.leak_free_pool(train, test, test_file, test, meta)
            return instruction_rows(draw_rows(pool, task["instructions"]["rows"], self.test_seed), task), train
        if seed is None or (split == "train" and k is None):
            raise ConfigError(f"a {split} sample needs a seed" + (" and k" if split == "train" else ""))
        pool = self.leak_free_pool(train, test, test_file, None if separate else test, meta)
        if split == "train":
            meta.update(k=k, seed=seed)
            return draw_balanced(pool, labels, k, seed, str(train.path), f"tasks.{self.name}",
                                 demonstrations=task["demonstrations"]), train
        # the pool does not depend on k: adding a k to the task changes no demonstration
        meta.update(seed=seed, per_class=task["demonstrations"])
        return draw_demonstrations(pool, labels, task["demonstrations"], seed, str(train.path),
                                   f"tasks.{self.name}"), train


def run_sample(task_name: str, task: dict, inputs: dict[str, str], split: str, out: str,
               k: int | None = None, seed: int | None = None, test_seed: int = 0) -> dict:
    """Write one sample file. split: 'train' (needs k and seed; stays clear of the task's `demonstrations` pool,
    0 when no prompt of the grid uses one), 'demos' (needs seed), 'test', 'instructions' (the task's instruction
    set) or 'ood:<name>'."""
    files = TaskFiles(task_name, task, inputs, test_seed)
    meta = {"task": task_name, "split": split, "fields": task["fields"], "labels": task["labels"],
            "test_seed": test_seed}
    if split.startswith("ood:"):
        rows, source = files.ood(split.removeprefix("ood:"))
    else:
        rows, source = files.in_domain(split, k, seed, meta)
    meta["sources"] = [dict(source.description, sha256=file_sha256(source.path))]
    table = to_table(rows, meta)
    write_parquet(table, out)
    return json.loads(table.schema.metadata[META_KEY.encode()])
