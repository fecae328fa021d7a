"""Derived models: what `instruct`, `ppo` and `classifier` write is a model folder like one `fetch-model`
prepares (safetensors, tokenizer, lmadapt_model.json), so every stage loads it through `models.load_model`.

Its lmadapt_model.json names the base's record, the kind of derivation, the hash of the settings and the
fingerprint of the data it was trained on; its `revision` (which every result row carries) is the base's revision
followed by each derivation, so a row names the whole chain: `27dcfa74...+instruct:1a2b3c4d`.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import fingerprint
from .resources import MODEL_INFO
from .io import atomic_path, markdown_table


def derived_record(name: str, kind: str, base: dict, settings: dict, data_fingerprint: str) -> dict:
    """The lmadapt_model.json of a model derived from the one `base` describes (its own record)."""
    settings_hash = fingerprint(settings)
    return {"name": name, "derive": kind, "source": f"derived:{kind}:{base['name']}", "base": base,
            "settings_hash": settings_hash, "data_fingerprint": data_fingerprint,
            "revision": f"{base['revision']}+{kind}:{fingerprint([settings_hash, data_fingerprint])[:8]}"}


def save_derived(model, tokenizer, out: str | Path, record: dict) -> None:
    """Write the model folder whole or not at all (a killed job leaves no half folder under the final name)."""
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MODEL_INFO).write_text(json.dumps(record, indent=2, sort_keys=True))


def summary_markdown(metrics: list[dict]) -> str:
    """One row per derived model: what it was trained from and on, and its held-out measure before -> after
    (instruct: the responses' perplexity; ppo: mean reward, share of bad generations, KL to the base; classifier:
    test accuracy)."""
    rows = []
    for m in metrics:
        if "records" in m:  # a classifier: its evaluation as a fine-tuning cell
            test = next(r for r in m["records"] if r["split"] == "test")
            rows.append([test["model"], "classifier", f"head on {test['task']} (k {test['k']}, seed {test['seed']})",
                         f"test accuracy {test['accuracy']:.3f}", "", ""])
            continue
        before, after = m["held_out"]["before"], m["held_out"]["after"]
        if m["derive"] == "instruct":
            rows.append([m["model"], "instruct", f"{m['base']['name']} on {', '.join(m['train']['sets'])}",
                         f"response perplexity {before['perplexity']} -> {after['perplexity']}", "", ""])
        else:
            rows.append([m["model"], "ppo", f"{m['base']['name']}, rewarded by {m['reward_model']['name']}",
                         f"mean reward {before['mean_reward']:.3f} -> {after['mean_reward']:.3f}",
                         f"{before['bad_share']:.3f} -> {after['bad_share']:.3f}", f"{after['kl_to_base']:.3f}"])
    header = ["model", "derived by", "from", "held out: before -> after", "bad generations", "KL to base"]
    return "\n".join(["# Derived models", ""] + markdown_table(header, sorted(rows))) + "\n"
