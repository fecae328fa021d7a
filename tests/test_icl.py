"""ICL: the shared-prefix cache gives the same numbers as full recomputation; study 5's failures are visible."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import FIXTURES, PATTERNS, rte_task
from lmadapt.checks import check_config
from lmadapt.forward import PrefixForward
from lmadapt.icl import label_logprobs, run_icl
from lmadapt.models import load_model
from lmadapt.prompt import choose_demonstrations, encode_prompt, task_pattern
from lmadapt.sample import run_sample
from lmadapt.settings import read_settings

SETTINGS = read_settings("icl", {"patterns": [], "fit": "skip", "batch_size": 4, "max_length": None,
                                 "dtype": "float32"})


@pytest.fixture(scope="module")
def rte(tmp_path_factory):
    folder = tmp_path_factory.mktemp("icl")
    # a bigger NLI training pool, enough for 128 balanced demonstrations
    pairs = [{"sentence1": f"The {w} saw the cat number {i} in the park today.", "sentence2": f"A {w} saw a cat.",
              "label": ["entailment", "not_entailment"][i % 2], "index": i}
             for i, w in enumerate(["man", "woman", "child", "dog"] * 40)]
    pd.DataFrame(pairs).to_csv(folder / "train.tsv", sep="\t", index=False)
    spec = rte_task(k=[64], prompt={"patterns": PATTERNS})
    spec["data"]["train"] = {"path": str(folder / "train.tsv"), "format": "glue_rte"}
    task = check_config({"tasks": {"rte": spec}})["tasks"]["rte"]
    inputs = {"train": str(folder / "train.tsv"), "test": str(FIXTURES / "glue_rte/dev.tsv"),
              "ood:hans": str(FIXTURES / "hans/heuristics_evaluation_set.txt")}
    run_sample("rte", task, inputs, "train", folder / "train.parquet", k=64, seed=42)
    run_sample("rte", task, inputs, "test", folder / "test.parquet")
    run_sample("rte", task, inputs, "ood:hans", folder / "ood_hans.parquet")
    return task, folder


def full_context_logprobs(model_dir, prefix, examples, verbalizers):
    """Recompute the whole context for every example and label, one unpadded sequence at a time."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = np.zeros((len(examples), len(verbalizers)))
    for i, example in enumerate(examples):
        for c, verbalizer in enumerate(verbalizers):
            ids = prefix + example + verbalizer
            with torch.no_grad():
                logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
            start = len(prefix) + len(example) - 1
            out[i, c] = sum(logprobs[start + j, t].item() for j, t in enumerate(verbalizer))
    return out


@pytest.mark.parametrize("pattern_name", ["gpt3", "long_words"])
@pytest.mark.parametrize("shots", [0, 6])
def test_cached_prefix_equals_full_recomputation(tiny_opt, rte, pattern_name, shots):
    task, folder = rte
    lm = load_model(tiny_opt, dtype="float32")
    pattern = task_pattern(task, pattern_name)
    rows = pd.read_parquet(folder / "test.parquet")
    demos = choose_demonstrations(pd.read_parquet(folder / "train.parquet"), 2, shots, 42)
    prompt = encode_prompt(lm, pattern, rows, demos)
    assert (max(len(v) for v in prompt.verbalizers) == 1) == (pattern_name == "gpt3")
    cached = label_logprobs(PrefixForward(lm, prompt.prefix), prompt.examples, prompt.verbalizers, batch_size=3)
    full = full_context_logprobs(tiny_opt, prompt.prefix, prompt.examples, prompt.verbalizers)
    np.testing.assert_allclose(cached, full, atol=1e-4, rtol=0)
    assert (cached.argmax(1) == full.argmax(1)).all()


def run(tiny_opt, task, folder, tmp_path, shots, **settings):
    out = tmp_path / f"icl_{shots}.json"
    run_icl(str(tiny_opt), task, str(folder / "train.parquet"),
            {"test": str(folder / "test.parquet"), "ood_hans": str(folder / "ood_hans.parquet")}, str(out),
            SETTINGS.updated(**settings), {"task": "rte", "model": "tiny", "k": shots, "seed": 42})
    return json.loads(out.read_text())["records"]


def test_overflowing_prompt_is_skipped_with_counts_never_truncated(tiny_opt, rte, tmp_path):
    task, folder = rte
    records = run(tiny_opt, task, folder, tmp_path, 128, patterns=["gpt3"])  # 128 demos >> 1024 positions
    assert [r["split"] for r in records] == ["test", "ood_hans"]
    for record in records:
        assert record["accuracy"] is None and record["skipped"]["reason"] == "prompt does not fit the context"
        assert record["skipped"]["prefix_tokens"] > record["skipped"]["context"] == 1024
    fitted = run(tiny_opt, task, folder, tmp_path, 128, patterns=["gpt3"], fit="max")
    details = fitted[0]["details"]
    assert fitted[0]["skipped"] is None and 0 < details["shots_used"] < 128 == details["shots_requested"]
    assert details["prefix_tokens"] + details["tokens_after_prefix"] <= 1024
    assert len(details["demonstration_ids"]) == details["shots_used"]


@pytest.fixture(scope="module")
def constant_model(tiny_opt, tmp_path_factory):
    """A model that answers the same whatever the input (study 5's OPT-125M on RTE and HANS)."""
    folder = tmp_path_factory.mktemp("constant")
    model = AutoModelForCausalLM.from_pretrained(tiny_opt)
    with torch.no_grad():
        norm = model.model.decoder.final_layer_norm
        norm.weight.zero_()  # the last hidden state no longer depends on the input
        norm.bias.copy_(torch.randn_like(norm.bias))
    model.save_pretrained(folder)
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(tiny_opt).save_pretrained(folder)
    return folder


def test_one_label_for_everything_is_flagged(constant_model, rte, tmp_path):
    task, folder = rte
    for shots in (2, 8):
        records = run(constant_model, task, folder, tmp_path, shots, patterns=["gpt3"])
        for record in records:
            assert record["skipped"] is None, record["skipped"]
            assert record["degenerate"] and max(record["predicted_distribution"].values()) == 1.0
            predicted = max(record["predicted_distribution"], key=record["predicted_distribution"].get)
            assert record["accuracy"] == record["per_class"][predicted]["support"] / record["n"]
        hans = next(r for r in records if r["split"] == "ood_hans")
        assert hans["majority_baseline"] == 0.5 and hans["accuracy"] == 0.5
        assert set(hans["by_group"]["heuristic"]) == {"lexical_overlap", "subsequence", "constituent"}


def test_encoder_decoder_scores_label_words_as_decoder_continuations(tiny_t5, rte, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from lmadapt.forward import seq2seq_label_logprobs

    task, folder = rte
    lm = load_model(tiny_t5, dtype="float32", head="auto")
    assert lm.model.config.is_encoder_decoder and lm.special_ids() == ([], [lm.tokenizer.eos_token_id])
    rows = pd.read_parquet(folder / "test.parquet")
    demos = choose_demonstrations(pd.read_parquet(folder / "train.parquet"), 2, 2, 42)
    prompt = encode_prompt(lm, task_pattern(task, "long_words"), rows, demos)  # multi-token label words
    inputs = [prompt.prefix + example + lm.trailing_ids() for example in prompt.examples]
    scores = seq2seq_label_logprobs(lm.model, lm.tokenizer.pad_token_id, inputs, prompt.verbalizers, batch_size=3)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5, dtype=torch.float32)
    for i, example in enumerate(prompt.examples):  # plain transformers, one unpadded example and label at a time
        for c, verbalizer in enumerate(prompt.verbalizers):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt.prefix + example + [lm.tokenizer.eos_token_id]]),
                               labels=torch.tensor([verbalizer])).logits[0].log_softmax(-1)
            want = sum(logits[j, t].item() for j, t in enumerate(verbalizer))
            assert scores[i, c] == pytest.approx(want, abs=1e-4)
    for shots in (0, 1, 2):  # zero-, one- and few-shot through the same stage
        records = run(tiny_t5, task, folder, tmp_path, shots, patterns=["gpt3"])
        assert all(r["skipped"] is None and r["n"] > 0 for r in records)
        assert len(records[0]["details"]["demonstration_ids"]) == shots
