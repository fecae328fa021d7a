"""Offline stand-ins for real checkpoints: tiny random OPT, GPT-2, T5 and BERT/RoBERTa models and byte-level BPE
tokenizers framing texts as each family's does, built in-process.

They are saved to a folder and loaded back through `from_pretrained`, the same code path as a real model, so
tests and benchmarks never touch the network.
"""
from __future__ import annotations

from pathlib import Path

WORDS = ("the a an this that movie film review story plot acting great good bad awful boring fun loved hated "
         "positive negative neutral yes no true false question answer sentiment premise hypothesis entailment "
         "not is was were it and but or of to in on for with as at by from very really quite too so "
         "Yes No True False Sentiment Review Question Answer").split()


# How each family's tokenizer frames a text: (special tokens, template, bos, eos, pad)
FRAMES = {
    "opt": (["<pad>", "</s>", "<unk>"], "</s> $A", "</s>", "</s>", "<pad>"),  # </s> first, as OPT's BOS
    "gpt2": (["<|endoftext|>"], None, "<|endoftext|>", "<|endoftext|>", None),  # nothing added, no pad token
    "t5": (["<pad>", "</s>", "<unk>"], "$A </s>", None, "</s>", "<pad>"),  # pad 0, </s> 1 at the end
    "roberta": (["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", "<s>", "</s>", "<pad>"),  # pad 1, as RoBERTa's
}


def build_tokenizer(texts=(), vocab_size: int = 400, family: str = "opt"):
    """A byte-level BPE tokenizer trained on `texts` plus a small English word list, framing a text as the
    family's tokenizer does (FRAMES)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials, template, bos, eos, pad = FRAMES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + [" ".join(WORDS)] * 4, trainer=trainer)
    if template:
        used = [(t, tok.token_to_id(t)) for t in specials if t in template]
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=used)
    names = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": specials[-1]}
    if family == "roberta":
        names |= {"cls_token": bos, "sep_token": eos}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **{k: v for k, v in names.items() if v})


def build_tiny_opt(folder: str | Path, texts=(), hidden: int = 32, layers: int = 3, heads: int = 4,
                   max_positions: int = 1024, seed: int = 0, vocab_size: int = 400) -> Path:
    """Save a random OPT (hidden <= 64) and its tokenizer to `folder`; returns the folder."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    folder = Path(folder)
    tokenizer = build_tokenizer(texts, vocab_size)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, ffn_dim=hidden * 4, max_position_embeddings=max_positions,
                       word_embed_proj_dim=hidden, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    OPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_gpt2(folder: str | Path, texts=(), hidden: int = 32, layers: int = 2, heads: int = 4,
                    max_positions: int = 1024, seed: int = 0, vocab_size: int = 400) -> Path:
    """Save a random GPT-2 and a GPT-2-style tokenizer (<|endoftext|> only, no padding token)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = Path(folder)
    tokenizer = build_tokenizer(texts, vocab_size, family="gpt2")
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=heads,
                        n_positions=max_positions, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_t5(folder: str | Path, texts=(), hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
                  vocab_size: int = 400) -> Path:
    """Save a random encoder-decoder T5 (Flan-T5 style: n_positions 512 in its config) and its tokenizer (pad 0,
    </s> 1 at the end)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    folder = Path(folder)
    tokenizer = build_tokenizer(texts, vocab_size, family="t5")
    config = T5Config(vocab_size=len(tokenizer), d_model=hidden, d_kv=hidden // heads, d_ff=hidden * 2,
                      num_layers=layers, num_decoder_layers=layers, num_heads=heads,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id, n_positions=512)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_bert(folder: str | Path, texts=(), hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
                    roberta: bool = False, vocab_size: int = 400) -> Path:
    """Save a random encoder with a masked-LM head, as roberta-base ships: BERT, or RoBERTa (positions after the
    padding index, 514 of them), with a RoBERTa-style tokenizer (<s> text </s>)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    folder = Path(folder)
    tokenizer = build_tokenizer(texts, vocab_size, family="roberta")
    config_class, model_class, positions = ((RobertaConfig, RobertaForMaskedLM, 514) if roberta
                                            else (BertConfig, BertForMaskedLM, 512))
    config = config_class(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, intermediate_size=hidden * 4, max_position_embeddings=positions,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
