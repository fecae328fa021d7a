"""The `extract` stage: a model's hidden states for every example of a sample, to Parquet.

One forward pass per batch yields every requested layer; a decoder's stops at the deepest one, and its few-shot
prefix is encoded once and its KV cache reused for every batch. An encoder (or an encoder-decoder's encoder)
encodes prefix and example together, closed by its tokenizer's trailing special tokens. Pooling covers only the
example's own tokens. Rows are streamed to the writer in row groups, so memory does not grow with the sample.
"""
from __future__ import annotations

import hashlib
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .config import ConfigError
from .costs import inference_flops, model_shape
from .resources import model_layers, resolve_layers
from .forward import EncoderForward, HalvingBatches, PrefixForward, pool
from .io import activation_column, atomic_path, read_table
from .methods import DECODER, ENCODER, folder_kind
from .metrics import Cost, write_cost
from .models import load_model
from .prompt import encode_prompt, prefix_demonstrations, prefix_text, task_pattern
from .sample import META_KEY
from .settings import Settings

ROWS_PER_GROUP = 256
def run_extract(model_dir: str, task: dict, samples: list[tuple[str, str]], settings: Settings,
                demos_path: str | None = None, seed: int | None = None) -> list[dict]:
    """Write the activations of every (sample, out) pair, loading the model and encoding the prefix once, and each
    one's cost record (the workflow's jobs give one pair; with more, each record counts the time until its own).
    settings: layers, pooling (list), pattern, shots, batch_size, max_length, store_dtype, dtype."""
    n_layers = model_layers(model_dir)  # checked before the weights load
    layers = resolve_layers(settings.layers, n_layers, f"model {model_dir}") if n_layers is not None else None
    if "cls" in settings.pooling and folder_kind(model_dir) != ENCODER:
        raise ConfigError(f"extract.pooling: cls pooling reads an encoder's [CLS] / <s> token; {model_dir} holds "
                          f"a {folder_kind(model_dir)} model")
    cost = Cost()
    lm = load_model(model_dir, dtype=settings.dtype, head="auto", spread=True)
    cost.loaded()
    parameters = model_shape(model_dir)["parameters"]
    pattern = task_pattern(task, settings.pattern)
    max_length = lm.prompt_budget(settings.max_length)
    demos = None
    if demos_path:
        demos, _ = prefix_demonstrations(lm, pattern, read_table(demos_path, META_KEY)[0], len(task["labels"]),
                                         settings.shots, seed, max_length)
    layers = layers or resolve_layers(settings.layers, lm.model.config.num_hidden_layers)
    forward, sizes = None, HalvingBatches(settings.batch_size)
    metas = []
    for sample_path, out in samples:
        start = time.time()
        rows, sample_meta = read_table(sample_path, META_KEY)
        prompt = encode_prompt(lm, pattern, rows, rows.iloc[:0] if demos is None else demos, max_length=max_length)
        if forward is None:  # the prefix is the same for every sample of this job: encode it once
            forward = (PrefixForward(lm, prompt.prefix, depth=max(layers)) if lm.kind == DECODER
                       else EncoderForward(lm, prompt.prefix, lm.trailing_ids()))
        meta = _write_activations(lm, forward, pattern, prompt, rows, demos, layers, settings, max_length,
                                  sample_path, sample_meta, out, sizes)
        meta["seconds"] = time.time() - start
        metas.append(meta)
        ran = len(prompt.prefix) + sum(map(len, prompt.examples))  # as the preflight costs an extract job
        write_cost("extract", out, cost.as_dict(tokens=ran, flops=inference_flops(parameters, ran),
                                                batch_size=sizes.size))
    return metas


def _write_activations(lm, forward, pattern, prompt, rows, demos, layers, settings, max_length, sample_path,
                       sample_meta, out, sizes: HalvingBatches) -> dict:
    demos_requested = demos is not None
    demos = rows.iloc[:0] if demos is None else demos
    store = pa.float16() if settings.store_dtype == "float16" else pa.float32()
    store_torch = torch.float16 if settings.store_dtype == "float16" else torch.float32
    fields = [pa.field("id", pa.string()), pa.field("label", pa.int64())]
    meta = {
        "model": lm.info, "layers": layers, "n_layers": forward.n_layers, "pooling": settings.pooling,
        "prompt": {"variant": "fewshot" if demos_requested else "none", "pattern": pattern.name,
                   "template": pattern.template, "shots": len(demos),
                   "shots_requested": settings.shots if demos_requested else 0,
                   "demonstration_ids": demos["id"].tolist(),
                   "prefix_tokens": len(prompt.prefix),
                   "prefix_sha256": hashlib.sha256(prefix_text(pattern, demos).encode()).hexdigest()},
        "dtype": str(lm.dtype).removeprefix("torch."), "store_dtype": settings.store_dtype,
        "max_length": max_length, "truncated": prompt.truncated, "n": len(rows),
        "sample": {"path": str(sample_path), "fingerprint": sample_meta["fingerprint"],
                   "task": sample_meta["task"], "split": sample_meta["split"], "k": sample_meta.get("k"),
                   "seed": sample_meta.get("seed")},
    }
    writer = None
    pending: list[pa.RecordBatch] = []

    def write_batch(batch):  # one batch's pooled states, appended in order (a batch halved: its halves in order)
        nonlocal writer, pending
        states, mask = forward.hidden_states([prompt.examples[i] for i in batch], layers)
        for row, i in enumerate(batch):  # pool the example's own tokens, not the separator before it
            mask[row, : prompt.own_from[i]] = 0
        columns = {"id": pa.array(rows["id"].iloc[batch].tolist(), pa.string()),
                   "label": pa.array(rows["label"].iloc[batch].tolist(), pa.int64())}
        for how in settings.pooling:
            for layer in layers:
                states_of = forward.first[layer] if how == "cls" else pool(states[layer].float(), mask, how)
                vectors = states_of.float().to(store_torch).cpu().numpy()
                columns[activation_column(how, layer)] = pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1), store), vectors.shape[1])
        if writer is None:
            schema = pa.schema(fields + [pa.field(name, col.type) for name, col in columns.items()
                                         if name not in ("id", "label")])
            writer = pq.ParquetWriter(tmp, schema.with_metadata({META_KEY: json.dumps(meta, sort_keys=True)}))
        pending.append(pa.RecordBatch.from_pydict(columns, schema=writer.schema))
        if sum(b.num_rows for b in pending) >= ROWS_PER_GROUP:
            writer.write_table(pa.Table.from_batches(pending))
            pending = []

    with atomic_path(out) as tmp:
        try:
            sizes.each([len(ids) for ids in prompt.examples], write_batch,
                       f"extract {sample_meta['task']}/{sample_meta['split']}")
            if pending:
                writer.write_table(pa.Table.from_batches(pending))
        finally:
            if writer is not None:
                writer.close()
    return meta

