"""The preflight: costs from a model's real shape, and cells that cannot run found from the real tokenizer and
samples before any model job."""
import json

import pytest
from transformers import OPTConfig

from conftest import PATTERNS, rte_task
from lmadapt.checks import check_config
from lmadapt.config import ConfigError
from lmadapt.costs import Zero, internode_bytes, model_shape, training_memory
from lmadapt.plan import Plan
from lmadapt.preflight import run_preflight
from lmadapt.settings import section_settings


def opt_shape(folder, hidden, layers, heads, lora=None):
    """costs.model_shape of an OPT of these sizes, from its config alone (no weights are read)."""
    OPTConfig(hidden_size=hidden, num_hidden_layers=layers, ffn_dim=4 * hidden, num_attention_heads=heads,
              vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=hidden,
              architectures=["OPTForCausalLM"]).save_pretrained(folder)
    return model_shape(folder, lora)


def test_costs_of_opt_6_7b_from_its_config(tmp_path):
    shape = opt_shape(tmp_path, 4096, 32, 32, {"r": 32, "target_modules": ["q_proj", "v_proj"]})
    assert 6.6e9 < shape["parameters"] < 6.8e9
    assert shape["lora_parameters"] == 32 * 2 * 32 * (4096 + 4096)
    settings = section_settings("finetune", {"batch_size": 8, "gradient_checkpointing": True})
    gb = lambda method, stage, gpus: training_memory(shape, method, settings, stage, False, gpus, 512) / 1e9  # noqa
    assert gb("head", 2, 1) > 100  # 16 bytes a parameter: no single 80 GB GPU holds full fine-tuning
    assert gb("head", 3, 4) < 30 < gb("head", 2, 4) < gb("head", 2, 1)  # ZeRO-3 partitions the weights too
    assert 13 < gb("lora_pattern", 2, 1) < 20  # 16-bit frozen weights and small adapters


def config(root, **stages):
    base = {"seeds": [1], "tasks": {"rte": rte_task(k=[2], prompt={"patterns": PATTERNS}, demonstrations=3)},
            "models": {"tiny": {"id": str(root / "models/tiny"), "gpus": 0}}, "extract": {"shots": 2},
            "icl": {"shots": [0, 2, 6]}, "finetune": {"methods": ["head"], "batch_size": 2, "effective_batch": 2,
                                                     "max_length": 24}}
    return check_config(base | stages)


def test_expected_skips_and_truncation_are_listed(short_context):
    root = short_context
    result = run_preflight(config(root), root / "samples", root / "models", root / "plan.json", root / "plan.md")
    skipped = {(c["pattern"], c["shots"]) for c in result["expected_skipped"]}
    assert ("gpt3", 6) in skipped and ("gpt3", 0) not in skipped  # 6 demonstrations overflow 256 tokens
    assert all(c["prefix_tokens"] + c["tokens_after_prefix"] > c["context"] == 256 for c in result["expected_skipped"])
    truncated = [c for c in result["notes"] if c["stage"] == "finetune"]
    assert truncated and "truncated to finetune.max_length" in truncated[0]["what"]
    page = (root / "plan.md").read_text()
    assert "Expected skipped cells" in page and "Estimated total" in page and "| tiny | icl |" in page
    assert json.loads((root / "plan.json").read_text())["cells"] == {"probe": 2, "bow": 1, "icl": 3, "finetune": 1}


def test_a_reduced_prefix_is_listed_and_a_job_that_cannot_run_is_an_error_naming_the_key(short_context):
    root = short_context
    result = run_preflight(config(root, extract={"shots": 6}), root / "samples", root / "models", root / "p.json",
                           root / "p.md")
    reduced = [c for c in result["notes"] if c["stage"] == "extract" and c["prompt"] == "fewshot_seed1"]
    assert reduced and all("of 6 demonstrations (a prefix takes at most 50% of the context)" in c["what"]
                           for c in reduced)
    tiny_gpu = {"gpu_memory_gb": 1e-6, "gpu_tflops": 312, "mfu": 0.3, "load_gb_per_s": 1.0}
    with pytest.raises(ConfigError, match=r"models\.tiny\.gpus: head fine-tuning needs about 0 GB per GPU under "
                                          r"zero2 on 1 GPU\(s\), more than preflight\.gpu_memory_gb"):
        run_preflight(config(root, preflight=tiny_gpu), root / "samples", root / "models", root / "q.json",
                      root / "q.md")
    assert "cannot run" in (root / "q.md").read_text()  # the page a person reads says which
    # LoRA modules the model does not have (T5's names for an OPT) would train nothing: an error naming the key
    models = {"tiny": {"id": str(root / "models/tiny"), "gpus": 0, "finetune": {"lora": {"target_modules": ["q"]}}}}
    with pytest.raises(ConfigError, match=r"models\.tiny\.finetune\.lora\.target_modules: \['q'\] name no "
                                          r"projection of model tiny; lora_pattern would adapt nothing"):
        run_preflight(config(root, models=models, finetune={"methods": ["lora_pattern"], "batch_size": 2,
                                                            "effective_batch": 2}),
                      root / "samples", root / "models", root / "r.json", root / "r.md")


def test_instruction_tuning_is_costed_on_its_real_instruction_set(short_context, tmp_path):
    root = short_context
    corpus = tmp_path / "alpaca.jsonl"
    corpus.write_text("".join(json.dumps({"instruction": "Say it.", "input": "", "output": "word " * n}) + "\n"
                              for n in range(1, 41)))
    derived = {"models": {"tiny": {"id": str(root / "models/tiny"), "gpus": 0},
                          "tiny_sft": {"base": "tiny", "derive": "instruct"}},
               "corpora": {"alpaca": {"path": str(corpus)}},
               "instruct": {"data": ["alpaca"], "held_out": 4, "max_length": 40, "epochs": 2}}
    result = run_preflight(config(root, **derived), root / "samples", root / "models", tmp_path / "p.json",
                           tmp_path / "p.md")
    job = next(j for j in result["jobs"] if j["stage"] == "instruct")
    assert job["model"] == "tiny_sft" and job["flops"] > 0 and job["fits"]
    cut = next(c for c in result["notes"] if c["stage"] == "instruct")
    assert "training examples cut to instruct.max_length" in cut["what"]
    # the derived model is measured and costed with its base's tokenizer and shape, before it exists
    assert {j["model"] for j in result["jobs"] if j["stage"] == "icl"} == {"tiny", "tiny_sft"}
    tiny_gpu = {"gpu_memory_gb": 1e-6, "gpu_tflops": 1, "mfu": 0.5, "load_gb_per_s": 1}
    with pytest.raises(ConfigError, match=r"models\.tiny_sft\.gpus: instruction tuning needs about"):
        run_preflight(config(root, preflight=tiny_gpu, finetune={"methods": []}, **derived), root / "samples",
                      root / "models", tmp_path / "q.json", tmp_path / "q.md")


def test_a_hub_source_not_pinned_to_a_commit_gets_the_commit_its_fetch_got(short_context, tmp_path):
    import shutil

    root = tmp_path / "resources"
    shutil.copytree(short_context / "models/tiny", root / "models/opt")
    commit = "27dcfa74d334bc871f3234de431e71c6eeba5dd6"
    (root / "models/opt/lmadapt_model.json").write_text(json.dumps({"name": "opt", "revision": commit}))
    pinned = config(short_context, models={"opt": {"id": "facebook/opt-125m", "revision": "main", "gpus": 0}},
                    corpora={"alpaca": {"hub": "vicgalle/alpaca-gpt4", "revision": "main"}})
    result = run_preflight(pinned, short_context / "samples", root / "models", tmp_path / "p.json", tmp_path / "p.md")
    notes = [c["what"] for c in result["notes"] if c["stage"] == "fetch"]
    assert notes == [f"models.opt.revision: 'main' is not a commit; its fetch got {commit}: pin it",
                     "corpora.alpaca.revision: 'main' is not a commit; fetch it and pin the commit"]


def test_a_model_beyond_one_node_is_costed_with_its_link_and_an_error_names_the_fewest_nodes(short_context, tmp_path):
    shape = opt_shape(tmp_path, 7168, 48, 56)  # OPT-30B's
    assert 29.5e9 < shape["parameters"] < 30.5e9
    settings = section_settings("finetune", {"batch_size": 4, "gradient_checkpointing": True})
    memory_on = lambda ranks: training_memory(shape, "head", settings, 3, False, ranks, 512)  # noqa: E731
    plan, zero3 = Plan(config(short_context)), Zero("zero3", 3, False)
    error = zero3.too_big(plan, memory_on, "opt_30b", (1, 4), "head fine-tuning", "finetune.batch_size")
    assert len(error) == 1 and "needs about 122 GB per GPU under zero3 on 4 GPU(s)" in error[0]
    assert "; set models.opt_30b.nodes: 2 (about 62 GB per GPU), add GPUs" in error[0]
    assert zero3.too_big(plan, memory_on, "opt_30b", (2, 4), "head fine-tuning", "finetune.batch_size") == []
    # each micro-batch gathers the 16-bit weights twice and reduce-scatters the gradients; a ring moves 7/8 of it
    assert internode_bytes(shape, "head", 3, 1, 4, 100, 10) == 0  # NVLink inside a node: left out
    assert internode_bytes(shape, "head", 3, 2, 8, 100, 10) == 2 * (100 * 3 + 10) * shape["parameters"] * 7 / 8
    # the tiny model on two nodes of one GPU: its jobs say so and pay for the link
    root = short_context
    two_nodes = {"tiny": {"id": str(root / "models/tiny"), "gpus": 1, "nodes": 2}}
    result = run_preflight(config(root, models=two_nodes, finetune={"methods": ["head"], "batch_size": 1,
                                                                   "effective_batch": 2, "max_length": 24}),
                           root / "samples", root / "models", tmp_path / "p.json", tmp_path / "p.md")
    job = next(j for j in result["jobs"] if j["stage"] == "finetune")
    assert job["nodes"] == 2 and job["gpus"] == 2 and job["communication_seconds"] > 0
    assert job["gpu_hours"] == pytest.approx(
        (job["load_seconds"] + job["compute_seconds"] + job["communication_seconds"]) * 2 / 3600)
    assert all(j["communication_seconds"] == 0 for j in result["jobs"] if j["stage"] != "finetune")
    assert "| tiny | finetune | 1 | 2 on 2 nodes |" in (tmp_path / "p.md").read_text()


def test_an_inference_job_one_gpu_cannot_hold_is_spread_over_the_fewest_gpus_of_its_node(short_context, tmp_path):
    from lmadapt.sizing import Requests

    opt_66b, opt_30b = opt_shape(tmp_path / "66b", 9216, 64, 72), opt_shape(tmp_path / "30b", 7168, 48, 56)
    plan = Plan(config(short_context, models={name: {"id": str(short_context / "models/tiny"), "gpus": gpus}
                                              for name, gpus in (("opt_66b", 4), ("opt_30b", 4), ("opt_66b_1", 1))},
                       preflight={"gpu_memory_gb": 80}, finetune={"methods": []}))
    flops = 2.0 * opt_66b["parameters"] * 1e6
    plan.inference_job("icl", "opt_66b", "rte", flops, opt_66b, 512, 4, "icl.batch_size", shots=0, seed=1,
                       pattern="gpt3")  # 132 GB of 16-bit weights: two 80 GB GPUs, layers in turn
    spread = plan.jobs[-1]
    assert spread["gpus"] == 2 and 66 < spread["memory_gb"] < 80 and spread["fits"]
    assert spread["compute_seconds"] == pytest.approx(flops / (312e12 * plan.cluster["mfu"]))  # one GPU's speed
    assert spread["gpu_hours"] == pytest.approx((spread["load_seconds"] + spread["compute_seconds"]) * 2 / 3600)
    # OPT-30B's 60 GB fit one GPU; its teacher's batch of 16 long prompts does not: the batch halves, no GPU added
    plan.inference_job("teacher", "opt_30b", "rte", flops, opt_30b, 2000, 16, "finetune.distill.batch_size", k=2,
                       seed=1)
    assert plan.jobs[-1]["gpus"] == 1 and plan.jobs[-1]["fits"] and not plan.errors
    assert plan.cells[-1]["what"].startswith("a batch of 16 needs about 108 GB per GPU; it halves to 4 when it runs "
                                             "out of memory (or set finetune.distill.batch_size: 4)")
    # a node of one GPU cannot hold OPT-66B: an error naming the model's key
    plan.inference_job("extract", "opt_66b_1", "rte", flops, opt_66b, 512, 4, "extract.batch_size", prompt="none",
                       sample="test")
    assert plan.errors == ["models.opt_66b_1.gpus: extract needs about 133 GB on one GPU for one example, more than "
                           "preflight.gpu_memory_gb (80); give it more GPUs per node"]
    # what the spread job asks Slurm for: its GPUs, from the plan in results/plan/
    out = tmp_path / "results/plan/preflight.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps({"jobs": plan.jobs}))
    requests = Requests(plan.config, tmp_path)
    assert requests.gpus("icl", spread, 1) == 2 and requests.gpus("teacher", plan.jobs[1], 1) == 1
