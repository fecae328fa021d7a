"""Preparing a model folder: hub-layout checkpoints (pytorch_model.bin only, as facebook/opt-* hold them) become
safetensors with the same weights; the weights a hub revision downloads; local models missing before any job."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import rte_task
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
