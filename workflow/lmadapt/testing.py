"""Offline stand-ins for real checkpoints: tiny random OPT, T5 and BERT models and a byte-level BPE tokenizer
built in-process.

They are saved to a folder and loaded back through `from_pretrained`, the same code path as a real model, so
tests and benchmarks never touch the network.
"""
from __future__ import annotations

from pathlib import Path

WORDS = ("the a an this that movie film review story plot acting great good bad awful boring fun loved hated "
         "positive negative neutral yes no true false question answer sentiment premise hypothesis entailment "
         "not is was were it and but or of to in on for with as at by from very really quite too so "
         "Yes No True False Sentiment Review Question Answer").split()


def build_tokenizer(texts=(), vocab_size: int = 400, eos_at_end: bool = False, encoder: bool = False):
    """A byte-level BPE tokenizer trained on `texts` plus a small English word list: </s> first (like OPT),
    or last (like T5, with eos_at_end), or <s> first and </s> last (like RoBERTa, with encoder)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "</s>", "<unk>"] + (["<s>"] if encoder else [])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = list(texts) + [" ".join(WORDS)] * 4
    tok.train_from_iterator(corpus, trainer=trainer)
    eos, cls = tok.token_to_id("</s>"), tok.token_to_id("<s>")
    if encoder:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                           special_tokens=[("<s>", cls), ("</s>", eos)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", cls_token="<s>", eos_token="</s>",
                                       sep_token="</s>", pad_token="<pad>", unk_token="<unk>")
    single, pair = ("$A </s>", "$A $B </s>") if eos_at_end else ("</s> $A", "</s> $A $B")
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def build_tiny_opt(folder: str | Path, texts=(), hidden: int = 32, layers: int = 3, heads: int = 4,
                   max_positions: int = 1024, seed: int = 0) -> Path:
    """Save a random OPT (hidden <= 64) and its tokenizer to `folder`; returns the folder."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    folder = Path(folder)
    tokenizer = build_tokenizer(texts)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, ffn_dim=hidden * 4, max_position_embeddings=max_positions,
                       word_embed_proj_dim=hidden, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    OPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_t5(folder: str | Path, texts=(), d_model: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a random encoder-decoder T5 (Flan-T5 style) and its tokenizer (pad 0, </s> 1 at the end)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    folder = Path(folder)
    tokenizer = build_tokenizer(texts, eos_at_end=True)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=d_model * 2, num_layers=layers,
                      num_decoder_layers=layers, num_heads=4, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_bert(folder: str | Path, texts=(), hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a random encoder (BERT with a masked-LM head, as roberta-base ships) and a RoBERTa-style tokenizer
    (<s> text </s>)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    folder = Path(folder)
    tokenizer = build_tokenizer(texts, encoder=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=hidden * 4, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
