"""Derived models (tiny OPT): instruction tuning puts its loss on the response tokens only, writes a model folder
that the one loader, extract and icl take like a fetched one, and resumes when killed; PPO (RLOO with clipping)
raises the mean reward of a reward that is easy to learn; a classifier's folder scores texts as a reward."""
import json
import subprocess
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from conftest import BIN, FIXTURES, PATTERNS, REPO, clean_env, kill_after_first_checkpoint, rte_task
from lmadapt.checks import check_config
from lmadapt.resources import MODEL_INFO
from lmadapt.extract import run_extract
from lmadapt.icl import run_icl
from lmadapt.instruct import IGNORE, alpaca_prompt, encode_example, pad_labels, run_instruct
from lmadapt.forward import pad_batch
from lmadapt.models import load_model, load_tokens
from lmadapt.ppo import Policy, Reward, prompt_ids, sample, train_policy
from lmadapt.sample import run_sample
from lmadapt.settings import read_settings, section_settings


@pytest.fixture(scope="module")
def instructions(tmp_path_factory):
    """An Alpaca-layout corpus (jsonl) and RTE's instruction sample, as the rule passes them."""
    folder = tmp_path_factory.mktemp("instructions")
    corpus = folder / "alpaca.jsonl"
    rows = [{"instruction": f"Repeat the word {word}.", "input": "" if i % 2 else f"say {word}", "output": word}
            for i, word in enumerate(["yes", "no", "good", "bad", "great", "awful", "movie", "film"] * 4)]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = check_config({"tasks": {"rte": rte_task(instructions={
        "templates": ["Does the premise entail the hypothesis?", "Entailment or not?"],
        "answers": {"entailment": "yes", "not_entailment": "no"}, "rows": 12})}})["tasks"]["rte"]
    inputs = {"train": str(FIXTURES / "glue_rte/train.tsv"), "test": str(FIXTURES / "glue_rte/dev.tsv")}
    run_sample("rte", task, inputs, "instructions", folder / "rte_instructions.parquet")
    return {"alpaca": str(corpus), "rte": str(folder / "rte_instructions.parquet")}, {"alpaca": {"path": str(corpus)}}


def instruct_settings(**overrides):
    section = check_config({"tasks": {"rte": rte_task()}, "instruct": dict(
        {"held_out": 6, "generations": 3, "max_new_tokens": 4, "epochs": 3, "batch_size": 4, "effective_batch": 4,
         "lr": 3e-3, "max_length": 400, "gradient_checkpointing": False, "checkpoint_every": 2}, **overrides)})
    return {key: value for key, value in section["instruct"].items() if key not in ("data", "tasks")}


def test_an_instruction_sample_never_holds_a_test_text(instructions):
    rows = pq.read_table(instructions[0]["rte"]).to_pandas()
    test = pd.read_csv(FIXTURES / "glue_rte/dev.tsv", sep="\t")
    train = pd.read_csv(FIXTURES / "glue_rte/train.tsv", sep="\t")
    test_texts = {f"{a}\n{b}" for a, b in zip(test["sentence1"], test["sentence2"])}
    pool = {f"{a}\n{b}" for a, b in zip(train["sentence1"], train["sentence2"])} - test_texts
    assert list(rows.columns[:4]) == ["id", "instruction", "input", "output"]
    assert set(rows["input"]) == pool and len(pool) < 12  # every training text but the test's (some repeat them)
    assert set(rows["output"]) <= {"yes", "no"}
    assert list(rows["instruction"][:2]) == ["Does the premise entail the hypothesis?", "Entailment or not?"]


def test_the_loss_is_on_the_response_tokens_only(tiny_opt):
    tokens = load_tokens(tiny_opt)
    ids, labels, cut = encode_example(tokens, "Name a film.", "", "The plot", 400)
    prompt = tokens.leading_special_ids() + tokens.encode(alpaca_prompt("Name a film.", ""))
    response = tokens.encode("The plot") + [tokens.tokenizer.eos_token_id]
    assert ids == prompt + response and not cut
    for position, (token, label) in enumerate(zip(ids, labels)):  # token by token
        assert label == (IGNORE if position < len(prompt) else token)
    short_ids, short_labels, cut = encode_example(tokens, "Name a film.", "", "The plot", len(prompt) + 1)
    assert cut and short_labels == [IGNORE] * len(prompt) + response[:1]
    # the model's loss with these labels is the mean cross-entropy of the response tokens and nothing else
    lm = load_model(tiny_opt, dtype="float32")
    other_ids, other_labels, _ = encode_example(tokens, "Say yes.", "now", "yes", 400)
    ids_batch, mask = pad_batch([ids, other_ids], lm.tokenizer.pad_token_id, lm.device)
    label_batch = pad_labels([labels, other_labels], lm.device)
    assert (label_batch[mask == 0] == IGNORE).all()
    with torch.no_grad():
        loss = lm.model(input_ids=ids_batch, attention_mask=mask, labels=label_batch).loss
        logprobs = lm.model(input_ids=ids_batch, attention_mask=mask).logits.log_softmax(-1)
    picked = [-logprobs[row, position - 1, token] for row, example in enumerate([labels, other_labels])
              for position, token in enumerate(example) if token != IGNORE]
    assert torch.isclose(loss, torch.stack(picked).mean(), atol=1e-5)


def test_an_instruction_tuned_folder_goes_through_extract_and_icl(tiny_opt, instructions, tmp_path):
    inputs, corpora = instructions
    settings = read_settings("instruct", instruct_settings())
    metrics = run_instruct("tiny_instruct", str(tiny_opt), inputs, corpora, settings,
                           str(REPO / "config/deepspeed/zero2.json"), str(tmp_path / "work"), str(tmp_path / "model"),
                           str(tmp_path / "metrics.json"), str(tmp_path / "generations.parquet"))
    held = metrics["held_out"]
    assert held["after"]["loss"] < held["before"]["loss"] and held["after"]["tokens"] > 0
    sets = metrics["train"]["sets"]
    assert sum(sets.values()) == 32 + 10 - 6 and set(sets) == {"alpaca", "rte"}
    info = json.loads((tmp_path / "model" / MODEL_INFO).read_text())
    base_revision = load_model(tiny_opt).info["revision"]
    assert info["base"]["revision"] == base_revision and info["revision"].startswith(base_revision + "+instruct:")
    assert info["data_fingerprint"] and info["settings_hash"] and (tmp_path / "model/model.safetensors").is_file()
    assert not (tmp_path / "work/checkpoints").exists()
    losses = pd.read_csv(tmp_path / "monitor/train/Train_Samples_train_loss.csv")  # DeepSpeed's monitor
    assert len(losses) == metrics["train"]["optimizer_steps"]
    generations = pq.read_table(tmp_path / "generations.parquet").to_pandas()
    assert len(generations) == 3 and list(generations.columns) == ["origin", "instruction", "input", "reference",
                                                                   "generated"]
    # a model like any other: extract and icl load it through the one loader and record its revision
    task = check_config({"tasks": {"rte": rte_task(prompt={"patterns": PATTERNS})}})["tasks"]["rte"]
    sample_inputs = {"train": str(FIXTURES / "glue_rte/train.tsv"), "test": str(FIXTURES / "glue_rte/dev.tsv")}
    run_sample("rte", task, sample_inputs, "test", tmp_path / "test.parquet")
    extract = check_config({"tasks": {"rte": rte_task()}, "extract": {"layers": [1, -1], "pooling": ["last"]}})
    settings = section_settings("extract", dict(extract["extract"], dtype="float32"))
    meta = next(iter(run_extract(str(tmp_path / "model"), task, [(str(tmp_path / "test.parquet"),
                                                                  str(tmp_path / "act.parquet"))], settings)))
    assert meta["n"] == 6 and meta["model"]["revision"] == info["revision"]
    icl = check_config({"tasks": {"rte": rte_task()}})["icl"]
    result = run_icl(str(tmp_path / "model"), task, None, {"test": str(tmp_path / "test.parquet")},
                     str(tmp_path / "icl.json"), section_settings("icl", dict(icl, dtype="float32")),
                     {"task": "rte", "model": "tiny_instruct", "k": 0, "seed": 1})
    assert all(r["provenance"]["model_revision"] == info["revision"] for r in result["records"])


def instruct_cli(tiny_opt, instructions, out, **overrides):
    inputs, corpora = instructions
    settings = instruct_settings(**overrides)
    run = {"checkpoint_every": settings.pop("checkpoint_every")}
    cmd = [str(BIN / "lmadapt"), "instruct", "--name", "tiny_instruct", "--base-dir", str(tiny_opt),
           "--data", *[f"{name}={path}" for name, path in inputs.items()], "--corpora", json.dumps(corpora),
           "--settings", json.dumps(settings), "--run-settings", json.dumps(run),
           "--deepspeed-config", str(REPO / "config/deepspeed/zero2.json"), "--work-dir", str(out / "work"),
           "--out-model", str(out / "model"), "--metrics", str(out / "metrics.json"),
           "--generations", str(out / "generations.parquet")]
    return cmd, clean_env(PYTHONPATH=str(REPO / "workflow"))


@pytest.mark.slow  # two training jobs in their own processes, one of them killed
def test_a_killed_instruct_job_resumes_to_the_same_model(tiny_opt, instructions, tmp_path):
    overrides = dict(epochs=4, batch_size=2, effective_batch=2, dropout=0.1, checkpoint_every=5)
    cmd, env = instruct_cli(tiny_opt, instructions, tmp_path, **overrides)
    kill_after_first_checkpoint(cmd, env, tmp_path / "work/checkpoints", tmp_path / "metrics.json")
    subprocess.run(instruct_cli(tiny_opt, instructions, tmp_path, **dict(overrides, checkpoint_every=9))[0],
                   env=env, check=True, capture_output=True)
    resumed = json.loads((tmp_path / "metrics.json").read_text())
    assert resumed["train"]["resumed_from_micro_step"] > 0
    whole = tmp_path / "whole"
    subprocess.run(instruct_cli(tiny_opt, instructions, whole, **overrides)[0], env=env, check=True,
                   capture_output=True)
    reference = json.loads((whole / "metrics.json").read_text())
    assert resumed["train"]["loss_per_step"] == reference["train"]["loss_per_step"]
    assert resumed["held_out"] == reference["held_out"] and resumed["model_revision"] == reference["model_revision"]
    assert (tmp_path / "model/model.safetensors").read_bytes() == (whole / "model/model.safetensors").read_bytes()


def ppo_settings(**overrides):
    section = check_config({"tasks": {"rte": rte_task()}, "ppo": dict(
        {"held_out": 16, "steps": 30, "batch_size": 8, "samples": 4, "lr": 1e-2, "kl_coef": 0.0,
         "max_new_tokens": 6, "reward": {"label": "x"}}, **overrides)})
    return section_settings("ppo", section["ppo"])


def test_ppo_raises_the_mean_reward_of_one_rewarded_token(tiny_opt):
    settings = ppo_settings()
    policy = Policy(str(tiny_opt), settings)
    prompts = [f"review {i}: this movie was" for i in range(48)]
    torch.manual_seed(0)  # the rewarded token: the one the base's completions hold most often (a learnable goal)
    completions = sample(policy.lm, policy.model, prompt_ids(policy.lm, prompts[16:]), 4, settings)
    token = Counter(t for c in completions for t in set(c)).most_common(1)[0][0]
    word = policy.lm.tokenizer.decode([token])

    def reward(texts):  # a toy classifier: 1 for a completion with the word, else 0
        return np.array([float(word in text) for text in texts])

    result = train_policy(policy, reward, prompts[16:], prompts[:16], settings)
    before, after = result["before"][0], result["after"][0]
    assert before["mean_reward"] < 0.2 and after["mean_reward"] > 0.8, (before, after)
    assert after["bad_share"] == 1 - after["mean_reward"] and before["kl_to_base"] == 0.0 < after["kl_to_base"]
    assert [step["step"] for step in result["per_step"]] == list(range(1, 31))


def test_a_classifier_folder_scores_texts_as_a_reward(tiny_opt, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_opt, num_labels=2, id2label={0: "nothate", 1: "hate"}, label2id={"nothate": 0, "hate": 1})
    model.save_pretrained(tmp_path / "reward")
    AutoTokenizer.from_pretrained(tiny_opt).save_pretrained(tmp_path / "reward")
    texts = ["a good movie", "an awful boring plot and bad acting"]
    wanted = Reward(str(tmp_path / "reward"), "nothate")(texts)
    avoided = Reward(str(tmp_path / "reward"), "hate", avoid=True)(texts)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "reward")
    with torch.no_grad():
        plain = [model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0, 0].item() for text in texts]
    assert np.allclose(wanted, plain, atol=1e-5) and np.allclose(avoided, plain, atol=1e-5)
    with pytest.raises(ValueError, match="no label 'toxic'"):
        Reward(str(tmp_path / "reward"), "toxic")
