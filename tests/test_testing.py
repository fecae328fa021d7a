import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_opt_round_trip(tiny_opt):
    model = AutoModelForCausalLM.from_pretrained(tiny_opt)
    tokenizer = AutoTokenizer.from_pretrained(tiny_opt)
    assert model.config.model_type == "opt" and model.config.hidden_size <= 64
    assert 2 <= model.config.num_hidden_layers <= 4
    ids = tokenizer("the movie was great", return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "the movie was great"
    again = AutoModelForCausalLM.from_pretrained(tiny_opt)
    with torch.no_grad():
        a, b = model(ids).logits, again(ids).logits
    assert a.shape == (1, ids.shape[1], len(tokenizer)) and torch.equal(a, b)
