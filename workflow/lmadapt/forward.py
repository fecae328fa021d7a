"""Forward passes after a shared prefix: the prefix is encoded once, its KV cache expanded across each batch.

Used by `extract` (hidden states, stopping at the deepest requested layer) and by `icl` and `teacher`
(label log-probabilities). Examples are right-padded after the prefix and get explicit positions, so padded
batches give the same numbers as one unpadded example at a time. Encoders attend both ways, so they cannot
reuse a prefix: `EncoderForward` encodes prefix and example together.
"""
from __future__ import annotations

import ctypes
import gc
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm
from transformers import DynamicCache


def decoder_layers(model) -> tuple[object, str]:
    """(owner, attribute) of the decoder-layer ModuleList of a causal LM (OPT, Llama-family, GPT-2)."""
    base = model.base_model
    for path in ("decoder.layers", "layers", "h"):
        owner = base
        *parents, attr = path.split(".")
        for p in parents:
            owner = getattr(owner, p, None)
        if owner is not None and isinstance(getattr(owner, attr, None), torch.nn.ModuleList):
            return owner, attr
    raise TypeError(f"cannot find the decoder layers of {type(model).__name__}")


def pad_batch(batch: list[list[int]], pad: int, device, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask (left-padded for generation with a decoder)."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        mask[row, span] = 1
    return input_ids.to(device), mask.to(device)


def batches_by_length(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def out_of_memory(error: BaseException) -> bool:
    """An allocation that failed: a GPU's out of memory, or the host's under a memory limit (torch's `can't
    allocate memory`, Python's MemoryError, a thread whose stack finds no room)."""
    return isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or isinstance(error, RuntimeError) and any(
        words in str(error) for words in ("out of memory", "can't allocate memory", "can't start new thread"))


def release_memory() -> None:
    """What a failed batch held, back to the system: the GPU's cache to the device, and the freed host heap (glibc
    keeps large freed blocks in it once they have been reused, where a retry cannot map them again)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator keeps what it keeps
        pass


class HalvingBatches:
    """A batch size that halves where a batch runs out of memory: `run` splits that batch in two and goes on, and
    every later batch is cut to the size that fitted. Each example of a batch is computed apart from the others
    (padding is masked, positions explicit), so the outputs are the full batches'. `size`: the size it ended
    with, for the job's record."""

    def __init__(self, size: int):
        self.size = size

    @classmethod
    def of(cls, batch_size) -> HalvingBatches:
        return batch_size if isinstance(batch_size, cls) else cls(batch_size)

    def run(self, batch: list, compute) -> None:
        """compute(part) for parts of `batch` of at most `size` items, in order."""
        pending = [batch[i: i + self.size] for i in range(0, len(batch), self.size)]
        while pending:
            part = pending.pop(0)
            try:
                compute(part)
                continue
            except (RuntimeError, MemoryError) as error:
                if len(part) == 1 or not out_of_memory(error):
                    raise
            release_memory()  # out of the handler: its traceback no longer holds the failed batch's tensors
            self.size = len(part) // 2
            print(f"out of memory on a batch of {len(part)}: batches of {self.size} from here on", flush=True)
            pending[:0] = [part[: self.size], part[self.size:]]

    def each(self, lengths: list[int], compute, desc: str) -> None:
        """compute(indices) for every batch of similar-length items (batches_by_length), halving as `run` does."""
        for batch in tqdm(batches_by_length(lengths, self.size), desc=desc, unit="batch"):
            self.run(batch, compute)


class PrefixForward:
    """Run batches of examples after a fixed prefix of token ids.

    depth: the deepest hidden-state index wanted (0 = embeddings, n = last layer, as in
    `output_hidden_states`); the forward then runs only the first `depth` decoder layers.
    """

    def __init__(self, lm, prefix: list[int], depth: int | None = None):
        self.lm = lm
        self.model = lm.model
        self.n_layers = self.model.config.num_hidden_layers
        self.depth = self.n_layers if depth is None else depth
        self.prefix_len = len(prefix)
        self.cache = None
        if prefix:
            with self._truncated(), torch.no_grad():
                ids = torch.tensor([prefix], device=lm.device)
                out = self.model.base_model(input_ids=ids, use_cache=True,
                                            position_ids=torch.arange(len(prefix), device=lm.device)[None])
                self.cache = [(layer.keys, layer.values) for layer in out.past_key_values.layers
                              if getattr(layer, "is_initialized", True) and layer.keys is not None
                              and layer.keys.numel()]

    @contextmanager
    def _truncated(self):
        """Drop the decoder layers below `depth` for the duration of a forward."""
        owner, attr = decoder_layers(self.model)
        full = getattr(owner, attr)
        if self.depth >= self.n_layers:
            yield full
            return
        setattr(owner, attr, torch.nn.ModuleList(list(full)[: max(self.depth, 1)]))
        try:
            yield getattr(owner, attr)
        finally:
            setattr(owner, attr, full)

    def _inputs(self, batch: list[list[int]]):
        device = self.lm.device
        input_ids, mask = pad_batch(batch, self.lm.tokenizer.pad_token_id, device)
        width = input_ids.shape[1]
        kwargs = dict(input_ids=input_ids,
                      position_ids=(self.prefix_len + torch.arange(width, device=device))[None].expand(len(batch), -1))
        full_mask = mask
        if self.cache is not None:
            full_mask = torch.cat([torch.ones((len(batch), self.prefix_len), dtype=torch.long, device=device), mask], 1)
            kwargs["past_key_values"] = DynamicCache(
                [(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1)) for k, v in self.cache])
        kwargs["attention_mask"] = full_mask
        return kwargs, mask

    @torch.no_grad()
    def hidden_states(self, batch: list[list[int]], indices: list[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """{index: [B, T, H]} over the examples' own positions, and their [B, T] mask.

        Index j < n is the input of decoder layer j (index `depth` < n: the output of layer depth-1), index n the
        model's last hidden state: the values of `output_hidden_states`, captured with our own hooks so that
        the truncated forward needs no final norm and no library-specific recording."""
        kwargs, mask = self._inputs(batch)
        captured = {}

        def keep_input(j):
            def hook(module, args, kw):
                captured[j] = args[0] if args else kw["hidden_states"]
            return hook

        def keep_output(j):
            def hook(module, args, output):
                captured[j] = output[0] if isinstance(output, tuple) else output
            return hook

        with self._truncated() as layers:
            hooks = [layers[j].register_forward_pre_hook(keep_input(j), with_kwargs=True, prepend=True)
                     for j in indices if j < len(layers)]
            if 0 < self.depth < self.n_layers:
                hooks.append(layers[self.depth - 1].register_forward_hook(keep_output(self.depth), prepend=True))
            try:
                out = self.model.base_model(**kwargs, use_cache=self.cache is not None)
            finally:
                for hook in hooks:
                    hook.remove()
        if self.n_layers in indices:
            captured[self.n_layers] = out.last_hidden_state
        return {j: captured[j] for j in indices}, mask

    @torch.no_grad()
    def next_token_logprobs(self, batch: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
        """For each row, log-probabilities [len(positions[row]), V] of the token after each given position.
        The LM head runs only on those positions (the vocabulary projection is a large share of the compute)."""
        kwargs, _ = self._inputs(batch)
        hidden = self.model.base_model(**kwargs, use_cache=self.cache is not None).last_hidden_state
        rows = torch.cat([torch.full((len(p),), r, device=hidden.device) for r, p in enumerate(positions)])
        cols = torch.tensor([i for p in positions for i in p], device=hidden.device)
        logprobs = self.model.get_output_embeddings()(hidden[rows, cols]).float().log_softmax(-1)
        return list(logprobs.split([len(p) for p in positions]))


@torch.no_grad()
def seq2seq_label_logprobs(model, pad_id: int, inputs: list[list[int]], verbalizers: list[list[int]],
                           batch_size: int | HalvingBatches, desc: str = "icl") -> np.ndarray:
    """Encoder-decoder models (Flan-T5): each whole input (prompt and the tokenizer's closing </s>) goes to the
    encoder, each verbalizer is scored as the decoder's continuation. The encoder attends both ways, so there is
    no prefix cache: each batch is encoded once and its states reused for every label. `seq2seq` fine-tuning
    predicts with this too."""
    device = next(model.parameters()).device
    start = model.config.decoder_start_token_id
    out = np.zeros((len(inputs), len(verbalizers)))

    def score(batch):
        ids, mask = pad_batch([inputs[i] for i in batch], pad_id, device)
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
        scores = np.zeros((len(batch), len(verbalizers)))
        for c, verbalizer in enumerate(verbalizers):
            decoder_ids = torch.tensor([[start] + verbalizer[:-1]] * len(batch), device=device)
            logprobs = model(encoder_outputs=encoded, attention_mask=mask,
                             decoder_input_ids=decoder_ids).logits.float().log_softmax(-1)
            targets = torch.tensor(verbalizer, device=logprobs.device)  # a spread model's head: its last GPU
            scores[:, c] = logprobs[:, torch.arange(len(verbalizer)), targets].sum(-1).cpu().numpy()
        out[batch] = scores

    HalvingBatches.of(batch_size).each([len(i) for i in inputs], score, desc)
    return out


class EncoderForward:
    """Hidden states of an encoder (BERT, RoBERTa) or of an encoder-decoder's encoder (T5), with the same
    interface as `PrefixForward.hidden_states`: each input is the prefix (leading special tokens and any
    demonstrations), the example and the tokenizer's trailing special tokens, encoded together (every layer
    attends both ways, so there is no prefix cache); the states returned are the example's positions, and
    `first` keeps the last batch's states at the input's first token ([CLS] / <s>: cls pooling)."""

    def __init__(self, lm, prefix: list[int], trailing: list[int]):
        self.lm, self.prefix, self.trailing = lm, list(prefix), list(trailing)
        self.encoder = lm.model.get_encoder() if lm.model.config.is_encoder_decoder else lm.model.base_model
        self.n_layers = lm.model.config.num_hidden_layers
        self.first: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def hidden_states(self, batch: list[list[int]], indices: list[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        inputs = [self.prefix + example + self.trailing for example in batch]
        ids, full_mask = pad_batch(inputs, self.lm.tokenizer.pad_token_id, self.lm.device)
        states = self.encoder(input_ids=ids, attention_mask=full_mask, output_hidden_states=True).hidden_states
        self.first = {j: states[j][:, 0] for j in indices}
        start, width = len(self.prefix), max(map(len, batch))
        mask = torch.zeros((len(batch), width), dtype=full_mask.dtype, device=full_mask.device)
        for row, example in enumerate(batch):
            mask[row, : len(example)] = 1
        return {j: states[j][:, start: start + width] for j in indices}, mask


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, whatever the padding side."""
    positions = torch.arange(mask.shape[1], device=mask.device)[None]
    return (positions * mask).argmax(dim=1)


def pool(states: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[B, H] from [B, T, H]: the last real token, or the mean over real tokens."""
    mask = mask.to(states.device)  # a spread model's layers return states on their own GPU
    if how == "last":
        return states[torch.arange(states.shape[0], device=states.device), last_positions(mask)]
    if how == "mean":
        weights = mask.to(states.dtype)[..., None]
        return (states * weights).sum(1) / weights.sum(1)
    raise ValueError(f"unknown pooling {how!r}: last or mean")
