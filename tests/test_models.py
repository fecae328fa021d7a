"""Preparing a model folder: hub-layout checkpoints (pytorch_model.bin only, as facebook/opt-* hold them) become
safetensors with the same weights; the weights a hub revision downloads; local models missing before any job."""
import json

import numpy as np

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, rte_task
from lmadapt.checks import check_config
from lmadapt.config import ConfigError
from lmadapt.resources import model_identity
from lmadapt.models import fetch_model, load_model, load_tokens, weight_files
from lmadapt.rehearsal import build_model


@pytest.fixture(scope="module")
def hub_layout_opt(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("opt_hub_layout"), "facebook/opt-125m",
                       ["a few words for the tokenizer"], seed=3)


def test_pytorch_bin_checkpoint_is_prepared_as_safetensors(hub_layout_opt, tmp_path):
    assert sorted(p.name for p in hub_layout_opt.iterdir() if "model" in p.name) == ["pytorch_model.bin"]
    original = torch.load(hub_layout_opt / "pytorch_model.bin", weights_only=True)  # OPT's keys: decoder.*
    assert all(key.startswith("decoder.") for key in original)
    info = fetch_model("opt", {"id": str(hub_layout_opt)}, tmp_path / "prepared")
    prepared = tmp_path / "prepared"
    assert not list(prepared.glob("*.bin")) and (prepared / "model.safetensors").is_file()
    saved = load_file(prepared / "model.safetensors")
    for key, value in original.items():
        assert torch.equal(saved[f"model.{key}"], value), key
    lm = load_model(prepared, dtype="float32")
    assert torch.equal(lm.model.lm_head.weight, original["decoder.embed_tokens.weight"])  # tied, as on the hub
    assert lm.max_length == 2048 == load_tokens(prepared).max_length
    assert json.loads((prepared / "lmadapt_model.json").read_text()) == dict(info, name="opt")
    assert info["source"] == f"local:{hub_layout_opt}" and info["revision"]


@pytest.mark.parametrize("hub_id, kind, context, first_key", [
    ("openai-community/gpt2", "decoder", 1024, "h.0.attn.c_attn.weight"),  # the base model's keys, as on the hub
    ("google/flan-t5-base", "encoder-decoder", 512, "encoder.block.0.layer.0.SelfAttention.q.weight"),
    ("FacebookAI/roberta-base", "encoder", 512, "roberta.embeddings.word_embeddings.weight"),  # 514 - pad - 1
])
def test_each_family_stand_in_prepares_and_loads_like_its_hub_model(hub_id, kind, context, first_key, tmp_path):
    """The rehearsal's stand-in of each family, in its hub model's layout, through fetch_model and the loader."""
    folder = build_model(tmp_path / "hub", hub_id, ["a few words for the tokenizer"], seed=3)
    assert first_key in load_file(folder / "model.safetensors")
    fetch_model("m", {"id": str(folder)}, tmp_path / "prepared")
    lm = load_model(tmp_path / "prepared", dtype="float32", head="auto")
    assert lm.kind == kind and lm.max_length == context == load_tokens(tmp_path / "prepared").max_length
    assert lm.tokenizer.pad_token_id is not None  # GPT-2 has none: the loader pads with its end-of-text token


def test_the_opt_stand_ins_keep_the_real_models_ratios(tmp_path):
    """The rehearsal's OPT stand-ins, OPT-125m to OPT-30B: a quarter of the real layers, a 64th of the width, the
    heads in the real ratio to each other; the weights per layer grow as the real ones do (width squared)."""
    import yaml

    from lmadapt.rehearsal import HUB_MODEL_SIZES

    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())["models"]
    opts = [spec["id"] for spec in paper.values() if spec.get("id", "").startswith("facebook/opt-")]
    assert opts[0] == "facebook/opt-125m" and opts[-1] == "facebook/opt-30b" and len(opts) == 7
    configs = {}
    for i, hub_id in enumerate(opts):
        folder = build_model(tmp_path / str(i), hub_id, ["a few words for the tokenizer"], seed=i)
        configs[hub_id] = json.loads((folder / "config.json").read_text())
    smallest = HUB_MODEL_SIZES[opts[0]]
    for hub_id, config in configs.items():
        real = HUB_MODEL_SIZES[hub_id]
        assert 4 * config["num_hidden_layers"] == real["num_hidden_layers"], hub_id
        assert 64 * config["hidden_size"] == real["hidden_size"] == 16 * config["ffn_dim"], hub_id
        assert (config["num_attention_heads"] * smallest["num_attention_heads"] ==
                real["num_attention_heads"] * configs[opts[0]]["num_attention_heads"]), hub_id


def test_weights_downloaded_from_a_hub_revision():
    opt_main = ["config.json", "pytorch_model.bin", "flax_model.msgpack", "tf_model.h5", "vocab.json", "merges.txt",
                "special_tokens_map.json", "tokenizer_config.json", "generation_config.json", "README.md"]
    assert weight_files(opt_main) == ["pytorch_model.bin"]
    sharded = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
               "tf_model.h5"]
    assert weight_files(sharded) == sharded[:3]
    both = ["model.safetensors", "pytorch_model.bin", "onnx/model.safetensors"]
    assert weight_files(both) == ["model.safetensors"]  # never both, never a subfolder's
    assert weight_files(["flax_model.msgpack"]) == []


def test_missing_local_model_is_a_config_error_naming_the_key(tmp_path, hub_layout_opt):
    base = {"tasks": {"rte": rte_task()}}
    with pytest.raises(ConfigError, match=r"models\.tiny\.id: local folder .*absent not found"):
        check_config(dict(base, models={"tiny": {"id": str(tmp_path / "absent")}}))
    with pytest.raises(ConfigError, match=r"models\.tiny\.gguf_file: .*nope\.gguf not found"):
        check_config(dict(base, models={"tiny": {"id": str(hub_layout_opt), "gguf_file": "nope.gguf"}}))
    with pytest.raises(ConfigError, match=r"models\.tiny\.package: package 'no_such_pkg' is not installed"):
        check_config(dict(base, models={"tiny": {"id": ".", "package": "no_such_pkg"}}))
    # what fetch_model's params hold: the identity, never the Slurm request or the dtype
    spec = {"id": "facebook/opt-125m", "revision": "27dcfa74", "gpus": 4, "mem_mb": 9000, "dtype": "bfloat16"}
    assert model_identity(spec) == {"id": "facebook/opt-125m", "revision": "27dcfa74", "package": None,
                                    "gguf_file": None}


def on_cpu_and_disk(device_map: dict) -> dict:
    """A two-GPU map run here: GPU 0's modules on the CPU, GPU 1's offloaded to disk, so that accelerate's hooks
    carry every module's inputs and weights between placements as between two GPUs. (BERT's pooler stays on the
    CPU: the masked-LM checkpoint lacks it, the base model initialises it, and disk holds only saved weights.)"""
    return {module: "cpu" if module == "pooler" else {0: "cpu", 1: "disk"}[device]
            for module, device in device_map.items()}


@pytest.mark.parametrize("build", ["opt", "t5", "bert"])
def test_a_model_spread_over_two_gpus_computes_what_one_device_does(build, tmp_path):
    """An inference job given two GPUs loads its model over both (models.spread_map: layers balanced in order,
    one process); every forward the inference stages run gives the one-device numbers: hidden states after a
    cached few-shot prefix and at a truncated depth, next-token log-probabilities, T5's label scores, an encoder's."""
    from lmadapt.forward import EncoderForward, PrefixForward, seq2seq_label_logprobs
    from lmadapt.models import spread_map
    from lmadapt.testing import build_tiny_bert, build_tiny_opt, build_tiny_t5

    texts = ["a few words for the tokenizer to learn from", "and some more of them"]
    folder = {"opt": lambda: build_tiny_opt(tmp_path / "m", texts, hidden=64, layers=4),
              "t5": lambda: build_tiny_t5(tmp_path / "m", texts, layers=3),
              "bert": lambda: build_tiny_bert(tmp_path / "m", texts, layers=4)}[build]()
    two_gpus = spread_map(folder, "auto", torch.float32, {0: 10**9, 1: 10**9})
    assert set(two_gpus.values()) == {0, 1}
    placed = list(two_gpus.values())
    assert placed == sorted(placed) or build == "opt"  # OPT ties its head to the embeddings, on the first GPU
    one = load_model(folder, dtype="float32", head="auto")
    spread = load_model(folder, dtype="float32", head="auto", device_map=on_cpu_and_disk(two_gpus),
                        offload_folder=tmp_path / "offload")
    assert {str(p.device) for p in spread.model.parameters()} == {"cpu", "meta"}  # meta: on disk until used
    ids = [one.encode(text) for text in texts]
    if build == "opt":
        prefix = one.leading_special_ids() + one.encode("a prefix of demonstrations")
        for depth in (2, None):
            a, b = PrefixForward(one, prefix, depth), PrefixForward(spread, prefix, depth)
            indices = [0, 1, 2] if depth else [0, 4]
            (states_a, mask_a), (states_b, mask_b) = a.hidden_states(ids, indices), b.hidden_states(ids, indices)
            assert torch.equal(mask_a, mask_b)
            for j in indices:
                assert torch.equal(states_a[j], states_b[j]), j
        positions = [[len(i) - 1] for i in ids]
        for x, y in zip(a.next_token_logprobs(ids, positions), b.next_token_logprobs(ids, positions)):
            assert torch.equal(x, y)
    elif build == "t5":
        verbalizers = [one.encode("yes"), one.encode("no more")]
        inputs = [i + one.trailing_ids() for i in ids]
        pad = one.tokenizer.pad_token_id
        assert np.array_equal(seq2seq_label_logprobs(one.model, pad, inputs, verbalizers, 2),
                              seq2seq_label_logprobs(spread.model, pad, inputs, verbalizers, 2))
    if build != "opt":  # an encoder's states: BERT's, T5's encoder
        (states_a, _), (states_b, _) = (EncoderForward(lm, lm.leading_special_ids(), lm.trailing_ids())
                                        .hidden_states(ids, [0, 2]) for lm in (one, spread))
        for j in (0, 2):
            assert torch.equal(states_a[j], states_b[j]), j
