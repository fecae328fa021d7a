"""The one prompt formatter: a task's pattern and verbalizer, demonstrations (and how many fit), and the token
ids of a prompt.

A prompt is token ids: the leading special tokens, the demonstration prefix (encoded once, its KV cache shared)
and each example. The prompt string is split where tokenizers split anyway: the prefix ends at the last
demonstration's label word and the separator starts the example's part, so prefix ids + example ids equal the
tokenization of the whole prompt string (a prefix ending in "\n\n" would be one byte-level token, 'ĊĊ', that the
model never sees between demonstrations). Probes, ICL, the teacher and fine-tuning all build their inputs here.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import PromptError


@dataclass(frozen=True)
class Pattern:
    name: str
    template: str  # e.g. "{premise} question: {hypothesis} Yes or No? answer:"
    verbalizer: dict  # label name -> continuation text, e.g. {"entailment": " Yes"}
    separator: str  # between demonstrations (and after the last one)
    labels: tuple  # the task's label names in id order

    def fill(self, row) -> str:
        return self.template.format_map({k: row[k] for k in self.fields})

    def fill_rows(self, rows: pd.DataFrame) -> list[str]:
        """`fill` of every row of a frame (the template's fields read once, the rows as tuples: a grid's
        preflight fills hundreds of thousands)."""
        fields = self.fields
        return [self.template.format_map(dict(zip(fields, values)))
                for values in rows[fields].itertuples(index=False, name=None)]

    def demonstration(self, row) -> str:
        return self.fill(row) + self.verbalizer[row["label_name"]]

    @property
    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.template) if f]


def task_pattern(task: dict, name: str | None = None) -> Pattern:
    """The named pattern of a task (its first one by default), checked against the task's fields and labels."""
    patterns = task["prompt"]["patterns"]
    if not patterns:
        raise PromptError("the task has no prompt patterns (tasks.<task>.prompt.patterns)")
    name = name or next(iter(patterns))
    if name not in patterns:
        raise PromptError(f"no pattern {name!r}; the task has {sorted(patterns)}")
    entry = patterns[name]
    pattern = Pattern(name, entry["template"], dict(entry["verbalizer"]), task["prompt"]["separator"],
                      tuple(task["labels"]))
    unknown = sorted(set(pattern.fields) - set(task["fields"]))
    if unknown:
        raise PromptError(f"pattern {name!r}: template uses {unknown}, not among the task's fields {task['fields']}")
    missing = [label for label in task["labels"] if label not in pattern.verbalizer]
    if missing:
        raise PromptError(f"pattern {name!r}: verbalizer has no word for label(s) {missing}")
    return pattern


def verbalizer_problems(tokens, pattern: Pattern, first_token: bool) -> list[str]:
    """Labels this tokenizer makes impossible to tell apart: verbalizers that tokenize to nothing, or to the same
    ids (in-context learning scores each whole verbalizer) or, for pattern-based fine-tuning (first_token), to
    the same first token."""
    ids = {label: tokens.encode(pattern.verbalizer[label]) for label in pattern.labels}
    problems = [f"pattern {pattern.name!r}: the verbalizer of {label!r} ({pattern.verbalizer[label]!r}) tokenizes to "
                f"nothing" for label, label_ids in ids.items() if not label_ids]
    what = "first token" if first_token else "tokens"
    same: dict[tuple, list[str]] = {}
    for label, label_ids in ids.items():
        if label_ids:
            same.setdefault(tuple(label_ids[:1] if first_token else label_ids), []).append(label)
    problems += [f"pattern {pattern.name!r}: labels {labels} "
                 f"({', '.join(repr(pattern.verbalizer[label]) for label in labels)}) have the same {what} "
                 f"{list(key)}: the scorer cannot tell them apart" for key, labels in same.items() if len(labels) > 1]
    return problems


def check_verbalizers(tokens, patterns: list[Pattern], first_token: bool = False):
    """Refuse, before the weights load, patterns whose labels this tokenizer cannot tell apart (the preflight says
    so for every cell; a job run by hand says it here). Returns the tokens, for models.load_model to reuse."""
    problems = [problem for pattern in patterns for problem in verbalizer_problems(tokens, pattern, first_token)]
    if problems:
        raise PromptError("; ".join(problems))
    return tokens


def choose_demonstrations(train: pd.DataFrame, n_labels: int, m: int, seed: int) -> pd.DataFrame:
    """m demonstrations from a training sample: balanced across classes (the remainder to classes drawn at
    random), shuffled, seeded."""
    if m == 0:
        return train.iloc[:0]
    rng = np.random.default_rng([seed, m])
    per_class = np.full(n_labels, m // n_labels)
    per_class[rng.choice(n_labels, size=m % n_labels, replace=False)] += 1
    parts = []
    for label, count in enumerate(per_class):
        members = train[train["label"] == label]
        if len(members) < count:
            raise PromptError(f"{m} demonstrations need {count} of label {label}, the training sample has "
                              f"{len(members)}")
        parts.append(members.iloc[rng.permutation(len(members))[:count]])
    demos = pd.concat(parts)
    return demos.iloc[rng.permutation(len(demos))].reset_index(drop=True)


def prefix_text(pattern: Pattern, demonstrations: pd.DataFrame) -> str:
    """The demonstrations joined by the separator; the separator after the last one begins each example's part."""
    return pattern.separator.join(pattern.demonstration(row) for _, row in demonstrations.iterrows())


@dataclass
class EncodedPrompt:
    """Token ids: `prefix` (leading specials + demonstrations, shared by every example) and one list per example
    (after demonstrations, the separator's tokens first: `own_from` is where the example's own tokens start)."""
    prefix: list[int]
    examples: list[list[int]]
    own_from: list[int]
    verbalizers: list[list[int]]  # per label id
    truncated: int  # examples cut (from the left) to fit max_length


def encode_prompt(lm, pattern: Pattern, rows: pd.DataFrame, demonstrations: pd.DataFrame,
                  max_length: int | None = None, reserve: int = 0,
                  after_demonstrations: bool | None = None) -> EncodedPrompt:
    """The prompt's ids: prefix + example equals the whole prompt string's tokenization. An example longer than
    max_length - prefix - reserve keeps its last tokens (where the pattern's cue is) and is counted in
    `truncated`; the prefix never is. after_demonstrations: whether the examples follow demonstrations (and so
    start with the separator); by default when there are any, set by the context guards that count an example's
    tokens before the demonstrations are chosen."""
    prefix = lm.leading_special_ids() + (lm.encode(prefix_text(pattern, demonstrations)) if len(demonstrations) else [])
    verbalizers = [lm.encode(pattern.verbalizer[label]) for label in pattern.labels]
    joined = len(demonstrations) > 0 if after_demonstrations is None else after_demonstrations
    examples, own_from = lm.encode_after(pattern.separator if joined else "",
                                         pattern.fill_rows(rows))
    truncated = 0
    if max_length is not None:
        budget = max_length - len(prefix) - reserve
        if budget < 1:
            raise PromptError(f"the prefix alone is {len(prefix)} tokens; with {reserve} reserved it does not fit "
                              f"the {max_length}-token context")
        for i, ids in enumerate(examples):
            if len(ids) > budget:
                examples[i] = ids[-budget:]
                own_from[i] = max(own_from[i] - (len(ids) - budget), 0)
                truncated += 1
    return EncodedPrompt(prefix, examples, own_from, verbalizers, truncated)


def classifier_inputs(tokens, pattern: Pattern, rows: pd.DataFrame,
                      max_length: int | None) -> tuple[list[list[int]], int]:
    """(ids, truncated) of a fine-tuned model's inputs: each example alone between the tokenizer's special tokens
    (a decoder's leading ones; an encoder's <s> ... </s> or [CLS] ... [SEP]; T5's ... </s>), within max_length
    (never more than the model's context); longer ones keep their end and are counted."""
    trailing = tokens.trailing_ids()
    encoded = encode_prompt(tokens, pattern, rows, rows.iloc[:0], max_length=tokens.prompt_budget(max_length))
    return [encoded.prefix + ids + trailing for ids in encoded.examples], encoded.truncated


def fit_demonstrations(lm, pattern, train: pd.DataFrame, n_labels: int, shots: int, seed: int,
                       needed_after_prefix: int, max_length: int, fit: str):
    """(demonstrations, prefix ids, counts) whose prompt fits the context, or (None, None, counts) showing why not.
    needed_after_prefix: the tokens to leave after the prefix (ICL, the teacher: the longest example and label
    word; the shortest where examples that do not fit are left out). fit: skip or skip_examples = `shots`
    demonstrations or none; max = the most of them that fit."""
    for used in range(shots, -1, -1):
        demos = choose_demonstrations(train, n_labels, used, seed)
        prefix = encode_prompt(lm, pattern, train.iloc[:0], demos).prefix
        counts = {"prefix_tokens": len(prefix), "tokens_after_prefix": needed_after_prefix, "context": max_length,
                  "shots_requested": shots, "shots_used": used}
        if len(prefix) + needed_after_prefix <= max_length:
            return demos, prefix, counts
        if fit != "max":
            break
    return None, None, counts


PREFIX_SHARE = 0.5  # a few-shot prefix takes at most this share of the context; the example keeps the rest


def prefix_demonstrations(tokens, pattern, pool: pd.DataFrame, n_labels: int, shots: int, seed: int,
                          max_length: int) -> tuple[pd.DataFrame, dict]:
    """(demonstrations, counts) of extract's few-shot prefix: `shots` from the pool, or the most that keep the
    prefix within PREFIX_SHARE of the context (long demonstrations, e.g. IMDB reviews, would leave no room for the
    example; the prefix is never cut). The count is recorded in the file's metadata; preflight predicts it."""
    demos, _, counts = fit_demonstrations(tokens, pattern, pool, n_labels, shots, seed,
                                          max_length - int(max_length * PREFIX_SHARE), max_length, "max")
    return demos, counts


def needed_after_prefix(examples: list[list[int]], verbalizers: list[list[int]], shortest: bool = False) -> int:
    """Tokens a prompt needs after its prefix: the longest example (the shortest, where the examples that do not
    fit are left out: icl.fit skip_examples) and the longest verbalizer."""
    return (min if shortest else max)(map(len, examples)) + max(map(len, verbalizers))


def examples_that_fit(examples: list[list[int]], verbalizers: list[list[int]], prefix_tokens: int,
                      context: int) -> np.ndarray:
    """Which examples fit the context after the prefix with every label word (icl.fit skip_examples scores
    these and leaves the others out, counted)."""
    room = context - prefix_tokens - max(map(len, verbalizers))
    return np.array([len(example) <= room for example in examples], dtype=bool)
