"""The method registry (lmadapt/methods.py) is what every place that lists methods reads, and a model's kind,
read from its checkpoint's config, refuses the stages and methods it cannot run before any job."""
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, GPT2Config, OPTConfig, T5Config

from conftest import PATTERNS, REPO, fixture_config, planned_jobs, rte_task, run_snakemake, write_config
from lmadapt.checks import check_config, kind_problems, model_kind_problems
from lmadapt.config import FINETUNE_RUN_SETTINGS, ConfigError, finetune_settings, load_schema
from lmadapt.costs import model_shape
from lmadapt.figures import KNOWN_METHODS, method_color
from lmadapt.finetune import build_model, run_finetune
from lmadapt.methods import (DECODER, ENCODER, ENCODER_DECODER, METHODS, ClassifierHead, Method,
                             method_pattern, model_kind)
from lmadapt.preflight import run_preflight
from lmadapt.settings import read_settings, section_settings

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def test_every_place_that_lists_methods_reads_the_registry(tmp_path, tiny_opt, tiny_t5):
    methods = list(METHODS)
    schema = load_schema()
    assert schema["properties"]["finetune"]["properties"]["methods"]["items"] == {"enum": methods}
    config = check_config({"tasks": {"rte": rte_task()}, "finetune": {"methods": methods}})
    assert config["aggregate"]["tables"]["finetune"]["methods"] == methods  # T3 shows every method by default
    with pytest.raises(ConfigError, match=r"finetune\.methods\[0\]"):
        check_config({"tasks": {"rte": rte_task()}, "finetune": {"methods": ["prompt_tuning"]}})
    colours = {method_color(m) for m in KNOWN_METHODS}
    assert set(methods) <= set(KNOWN_METHODS) and len(colours) == len(KNOWN_METHODS)
    # the rule's {method} wildcard takes every registered method: the grid of all a decoder runs plans
    on_decoders = [name for name, spec in METHODS.items() if DECODER in spec.kinds]
    everything = fixture_config(tiny_opt)
    everything["finetune"]["methods"] = on_decoders
    plan = planned_jobs(run_snakemake(tmp_path, "--configfile", str(write_config(tmp_path / "c.yaml", everything)),
                                      "-n"))
    assert plan["finetune"] == len(on_decoders) * 2  # one k, two seeds
    assert plan["teacher"] == 2 * any(spec.teacher for spec in METHODS.values())
    classes = {"classifier": "ForSequenceClassification", "verbalizer": "ForCausalLM",
               "seq2seq": "ForConditionalGeneration"}
    for name, spec in METHODS.items():  # each method's settings and model follow its entry
        settings = finetune_settings(config, name)
        assert ("lora" in settings, "lr" in settings, "distill" in settings) == (spec.lora, not spec.lora,
                                                                                spec.teacher)
        folder = tiny_opt if DECODER in spec.kinds else tiny_t5
        lora = dict(settings.get("lora", {}), target_modules=["q_proj", "v_proj"] if folder == tiny_opt else ["q", "v"])
        _, model = build_model(str(folder), name, 2, section_settings("finetune", dict(
            settings, dropout=0.0, gradient_checkpointing=False, lora=lora)))
        core = model.get_base_model() if spec.lora else model
        assert hasattr(model, "peft_config") == spec.lora
        assert type(core).__name__.endswith(classes[spec.head.name]), name
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert all("lora_" in n or "score" in n for n in trainable) == spec.lora, name


def test_model_kind_comes_from_the_checkpoint_config():
    assert model_kind(OPTConfig(**TINY, ffn_dim=64, architectures=["OPTForCausalLM"]).to_dict()) == DECODER
    assert model_kind(GPT2Config(n_embd=32, n_layer=2, n_head=2).to_dict()) == DECODER
    assert model_kind(T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=2).to_dict()) == ENCODER_DECODER
    assert model_kind(BertConfig(**TINY).to_dict()) == ENCODER
    assert model_kind(BertConfig(**TINY, architectures=["BertForSequenceClassification"]).to_dict()) == ENCODER


def local_models(tmp_path):
    """A decoder, an encoder and an encoder-decoder as local folders (their config.json is all a kind check
    reads)."""
    folders = {"opt": OPTConfig(**TINY, ffn_dim=64), "bert": BertConfig(**TINY),
               "t5": T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=2)}
    for name, model_config in folders.items():
        model_config.save_pretrained(tmp_path / name)
    return {name: {"id": str(tmp_path / name), "gpus": 0} for name in folders}


def test_a_stage_or_method_a_model_cannot_run_is_refused_naming_the_key(tmp_path):
    models = local_models(tmp_path)

    def config(**sections):
        base = {"tasks": {"rte": rte_task(prompt={"patterns": PATTERNS})}, "models": models,
                "extract": {"models": ["opt"], "prompts": ["none"]}, "icl": {"shots": [0]},
                "finetune": {"models": ["opt"], "methods": ["head"]}}
        return check_config({key: dict(base.get(key, {}), **sections.get(key, {})) for key in base})

    assert model_kind_problems(config(finetune={"models": ["t5", "opt"], "methods": ["head", "pattern"]}),
                               tmp_path / "none") == [
        "models: icl runs on decoder and encoder-decoder models; bert is an encoder model",
        "finetune.methods: method head runs on decoder and encoder models; t5 is an encoder-decoder model",
        "finetune.methods: method pattern runs on decoder models; t5 is an encoder-decoder model"]
    # Flan-T5 in-context learning, every kind's activations, an encoder's classification head: all run
    assert model_kind_problems(config(icl={"models": ["t5", "opt"]}, extract={"models": ["bert", "t5", "opt"]},
                                      finetune={"models": ["bert", "opt"]}), tmp_path / "none") == []
    assert model_kind_problems(config(icl={"models": ["bert"]}, finetune={"models": ["bert"], "methods": ["pattern"]}),
                               tmp_path / "none") == [
        "icl.models: icl runs on decoder and encoder-decoder models; bert is an encoder model",
        "finetune.methods: method pattern runs on decoder models; bert is an encoder model"]
    # [CLS] pooling is an encoder's: the section's setting for every model, or a model's own
    models["bert"]["extract"] = {"pooling": ["cls", "mean"]}
    assert model_kind_problems(config(extract={"models": ["bert", "t5"], "pooling": ["mean"]}, icl={"models": ["opt"]}),
                               tmp_path / "none") == []
    assert model_kind_problems(config(extract={"models": ["bert", "t5"], "pooling": ["cls"]}, icl={"models": ["opt"]}),
                               tmp_path / "none") == [
        "extract.pooling: cls pooling reads an encoder's [CLS] / <s> token; t5 is an encoder-decoder model"]
    del models["bert"]["extract"]
    # a decoder sent to seq2seq by its own settings: the key named is the model's
    models["opt"]["finetune"] = {"methods": ["head", "seq2seq"]}
    assert model_kind_problems(config(icl={"models": ["opt"]}), tmp_path / "none") == [
        "models.opt.finetune.methods: method seq2seq runs on encoder-decoder models; opt is a decoder model"]
    del models["opt"]["finetune"]
    # the workflow stops as it loads, before any job, with the same line
    workflow_config = fixture_config(tmp_path / "opt")
    workflow_config["models"] = models
    for stage, names in (("extract", ["opt"]), ("icl", ["bert"]), ("finetune", ["opt"])):
        workflow_config[stage]["models"] = names
    path = write_config(tmp_path / "config.yaml", workflow_config)
    proc = run_snakemake(tmp_path, "--configfile", str(path), "-n", check=False)
    assert proc.returncode != 0 and not (tmp_path / "results").exists()
    assert "icl.models: icl runs on decoder and encoder-decoder models; bert is an encoder model" in (
        proc.stdout + proc.stderr), proc.stdout[-2000:]


class MeanPooled(torch.nn.Module):
    """A model body under a linear layer over its mean-pooled last hidden states."""

    def __init__(self, body, n_labels: int):
        super().__init__()
        self.body = body
        self.score = torch.nn.Linear(body.get_input_embeddings().embedding_dim, n_labels)


class MeanPooledHead(ClassifierHead):
    """A head no built-in method has: the classes scored from the mean of every real position's last state."""

    name, loads = "mean_pooled", "base"

    def build(self, model, n_labels):
        return MeanPooled(model, n_labels)

    def logits(self, model, ids, mask, verbalizers):
        hidden = model.body(input_ids=ids, attention_mask=mask).last_hidden_state
        return model.score((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


def test_a_method_with_a_new_head_is_one_entry_and_is_checked_trained_costed_and_planned(
        monkeypatch, tmp_path, rte_samples, short_context):
    monkeypatch.setitem(METHODS, "mean_pooled", Method(MeanPooledHead(), lora=False, teacher=False, kinds=(DECODER,),
                                                       summary="every weight and a head over mean-pooled states"))
    assert "mean_pooled" in method_pattern().split("|")  # the rules' {method} wildcard
    run = {"epochs": 6, "batch_size": 4, "effective_batch": 4, "lr": 1e-3, "warmup": 0.0, "dropout": 0.0,
           "gradient_checkpointing": False}
    config = check_config({"seeds": [1], "tasks": {"rte": rte_task(k=[2], prompt={"patterns": PATTERNS},
                                                                   demonstrations=3)},
                           "extract": {"shots": 2}, "icl": {"shots": [0]},
                           "models": {"tiny": {"id": str(short_context / "models/tiny"), "gpus": 0}},
                           "finetune": {"methods": ["mean_pooled"], "models": ["tiny"], **run}})
    # the config checks take its settings; an encoder-decoder is refused by its kinds
    run_settings = {key: config["finetune"][key] for key in FINETUNE_RUN_SETTINGS}
    settings = finetune_settings(config, "mean_pooled") | run_settings
    read_settings("finetune", settings, "mean_pooled")
    assert kind_problems({"finetune": [{"model": "t5", "method": "mean_pooled"}]}, {"t5": ENCODER_DECODER}) == [
        "finetune.methods: method mean_pooled runs on decoder models; t5 is an encoder-decoder model"]

    # trains and predicts: the loss falls on RTE's 16 training rows, every test row is predicted
    task, folder = rte_samples(8)
    result = run_finetune(str(short_context / "models/tiny"), task, str(folder / "train.parquet"),
                          {"test": str(folder / "test.parquet")}, str(tmp_path / "metrics.json"),
                          section_settings("finetune", config["finetune"]),
                          {"task": "rte", "model": "tiny", "method": "mean_pooled", "k": 8, "seed": 1},
                          str(tmp_path / "work"), str(REPO / "config/deepspeed/zero2.json"))
    record = result["records"][0]
    losses = record["details"]["loss_per_step"]
    assert len(losses) == 6 * 4 and np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05
    predictions = pd.read_parquet(tmp_path / "work/predictions_test.parquet")
    assert len(predictions) == record["n"] and set(predictions["prediction"]) <= {0, 1}
    _, model = build_model(str(short_context / "models/tiny"), "mean_pooled", 2, section_settings("finetune", config[
        "finetune"]))
    trained = sum(p.numel() for p in model.parameters())
    assert record["details"]["trainable_parameters"] == trained  # the body and the new layer

    # costed and planned: the preflight plans its jobs with the method's own cost
    plan = run_preflight(config, short_context / "samples", short_context / "models", tmp_path / "plan.json",
                         tmp_path / "plan.md")
    [job] = [job for job in plan["jobs"] if job["stage"] == "finetune"]
    shape = model_shape(short_context / "models/tiny")
    assert job["method"] == "mean_pooled" and job["memory_gb"] * 1e9 > METHODS["mean_pooled"].state_bytes(
        shape, 2, False, 0)
    per_token = METHODS["mean_pooled"].flops_per_token(config["finetune"]["gradient_checkpointing"])
    assert job["flops"] > per_token * shape["parameters"] * 6 * 4  # six epochs of four examples' tokens at least
