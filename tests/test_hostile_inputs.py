"""Mistakes a researcher plausibly makes, each refused with one line that names the key, file or line, before any
job where the config and the files at hand tell (the config's check runs as the workflow loads, before any job
and in `lmadapt validate-config`); the leaks and prompts that would give a wrong paper rather than a crash first
among them."""
import json
import shutil

import pandas as pd
import pytest

from conftest import FIXTURES, PATTERNS, rte_task
from lmadapt.checks import check_config
from lmadapt.config import ConfigError
from lmadapt.data import DataError, read_split
from lmadapt.models import load_tokens
from lmadapt.prompt import PromptError, task_pattern, verbalizer_problems
from lmadapt.sample import overlap_message, run_sample
from lmadapt.settings import section_settings

NLI = ["premise", "hypothesis"], ["entailment", "not_entailment"]


def base() -> dict:
    """A valid config with a model, so that the checks of every stage apply."""
    return {"tasks": {"rte": rte_task(prompt={"patterns": json.loads(json.dumps(PATTERNS))}, demonstrations=3)},
            "models": {"opt": {"id": "facebook/opt-125m"}}, "icl": {"shots": [0, 2]},
            "finetune": {"distill": {"shots": 2}}}


def pattern(config, name="gpt3"):
    return config["tasks"]["rte"]["prompt"]["patterns"][name]


def setting(path: str, value):
    """A change at a dotted key path of the base config."""
    def change(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return change


# (what the researcher did, the change, the message it must give)
CONFIG_CASES = [
    ("template without a field: every prompt the same", lambda c: pattern(c).update(template="Yes or No? answer:"),
     r"tasks\.rte\.prompt\.patterns\.gpt3\.template: uses none of the task's fields \['premise', 'hypothesis'\] "
     r"\(e\.g\. \{premise\}\): every example's prompt would be the same"),
    ("template with a field the task lacks", lambda c: pattern(c).update(template="{sentence1} {hypothesis}?"),
     r"tasks\.rte\.prompt\.patterns\.gpt3\.template: uses \['sentence1'\], not among the task's fields"),
    ("template with an unmatched brace", lambda c: pattern(c).update(template="{premise} {hypothesis?"),
     r"tasks\.rte\.prompt\.patterns\.gpt3\.template: expected '\}' before end of string"),
    ("a label without a verbalizer", lambda c: pattern(c)["verbalizer"].pop("not_entailment"),
     r"tasks\.rte\.prompt\.patterns\.gpt3\.verbalizer: no word for label\(s\) \['not_entailment'\]"),
    ("a verbalizer for a label the task lacks", lambda c: pattern(c)["verbalizer"].update(neutral=" Maybe"),
     r"tasks\.rte\.prompt\.patterns\.gpt3\.verbalizer: \['neutral'\] are not labels of the task"),
    ("two labels with the same word", lambda c: pattern(c).update(verbalizer={"entailment": " Yes",
                                                                             "not_entailment": " Yes"}),
     r"tasks\.rte\.prompt\.patterns\.gpt3\.verbalizer: labels \['entailment', 'not_entailment'\] share the word "
     r"' Yes': no scorer can tell them apart"),
    ("a learning rate YAML read as a string", setting("finetune.lr", "1e-5"),
     r"finetune\.lr: '1e-5' is not of type 'number'"),
    ("a LoRA rate as a string", setting("finetune.lora", {"lr": "3e-4"}),
     r"finetune\.lora\.lr: '3e-4' is not of type 'number'"),
    ("seeds as one number", setting("seeds", 3), r"seeds: 3 is not of type 'array'"),
    ("k of zero", lambda c: c["tasks"]["rte"].update(k=[0]), r"tasks\.rte\.k\[0\]: 0 is less than the minimum of 1"),
    ("a typo in a task key", lambda c: c["tasks"]["rte"].update(n_tset=6), r"tasks\.rte: unknown key 'n_tset'"),
    ("a typo in a section", setting("fintune", {"epochs": 2}), r"unknown key 'fintune'"),
    ("a method that does not exist", setting("finetune.methods", ["prompt_tuning"]), r"finetune\.methods\[0\]"),
    ("negative shots", setting("icl.shots", [-1]), r"icl\.shots\[0\]: -1 is less than the minimum of 0"),
    ("more shots than the pool holds", setting("icl.shots", [0, 40]),
     r"icl\.shots: 40 demonstrations for task rte need 20 per class"),
    ("a stage naming a task not declared", setting("icl.tasks", ["mnli"]),
     r"icl\.tasks: 'mnli' is not declared under tasks"),
    ("a label map onto a label not declared",
     lambda c: c["tasks"]["rte"]["data"]["train"].update(label_map={"0": "entail"}),
     r"tasks\.rte\.data\.train\.label_map\.0: 'entail' is not one of the task's labels"),
    ("a source with both a path and a hub name",
     lambda c: c["tasks"]["rte"]["data"]["train"].update(hub="nyu-mll/glue"), r"tasks\.rte\.data\.train"),
    ("an effective batch the micro-batch does not divide", setting("finetune.batch_size", 3),
     r"finetune\.effective_batch: effective batch 32 is not a multiple of batch_size x gpus = 3 for model opt"),
    ("zero probe epochs", setting("probe.mlp", {"epochs": 0}), r"probe\.mlp\.epochs: 0 is less than the minimum"),
    ("an unknown overlap switch", lambda c: c["tasks"]["rte"].update(overlap="ignore"),
     r"tasks\.rte\.overlap: 'ignore' is not one of \['error', 'drop'\]"),
    ("a model deriving from itself", setting("models", {"a": {"base": "b", "derive": "instruct"},
                                                         "b": {"base": "a", "derive": "instruct"}}),
     r"models\.[ab]\.base: (a -> b -> a|b -> a -> b) derive from each other"),
    ("the gold label as a prompt field", lambda c: c["tasks"]["rte"].update(fields=["premise", "label"]),
     r"tasks\.rte\.fields: 'label' is the gold label, not an input; a prompt showing it would carry the answer"),
    ("a field read from the label's column",
     lambda c: c["tasks"]["rte"]["data"]["test"].update(columns={"hypothesis": "label"}),
     r"tasks\.rte\.data\.test\.columns\.hypothesis: 'label' is also the label's column; a prompt showing it would "
     r"carry the answer"),
    ("a verbalizer of only whitespace", lambda c: pattern(c)["verbalizer"].update(not_entailment="   "),
     r"tasks\.rte\.prompt\.patterns\.gpt3\.verbalizer\.not_entailment: '   ' is only whitespace; every label needs "
     r"a word a reader can see"),
    ("a test sample of no rows", lambda c: c["tasks"]["rte"].update(n_test=0),
     r"tasks\.rte\.n_test: 0 is not valid; give an integer >= 1, or 'all'$"),
]


@pytest.mark.parametrize("change, message", [case[1:] for case in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_a_config_mistake_is_refused_naming_the_key(change, message):
    check_config(base())  # valid as it is
    config = base()
    change(config)
    with pytest.raises(ConfigError, match=message):
        check_config(config)


# (what the file holds, its name, its bytes, the source's settings, the message)
DATA_CASES = [
    ("a CSV saved as latin-1", "reviews.csv", "premise,hypothesis,label\nun café,b,entailment\n".encode("latin-1"),
     {}, r"^line 2 of .*reviews\.csv, column 7 \(byte 0xe9\): not utf-8 text; give the file's encoding"),
    ("a JSON Lines record cut off", "pairs.jsonl",
     b'{"premise": "a", "hypothesis": "b", "label": "entailment"}\n{"premise": "a", "hyp\n', {},
     r"^line 2 of .*pairs\.jsonl: not a JSON object \(Unterminated string"),
    ("a column named otherwise", "pairs.csv", b"sentence1,hypothesis,label\na,b,entailment\n", {},
     r"pairs\.csv: missing column\(s\) \['premise'\]"),
    ("a header and no rows", "pairs.tsv", b"premise\thypothesis\tlabel\n", {},
     r"pairs\.tsv: no data rows \(only a header line\)$"),
    ("an empty file", "pairs.csv", b"", {}, r"pairs\.csv: empty file \(no header, no rows\)$"),
    ("a label spelled otherwise", "pairs.csv", b"premise,hypothesis,label\na,b,entailed\n", {},
     r"line 2 of .*pairs\.csv.*'entailed'"),
    ("a text left empty", "pairs.csv", b"premise,hypothesis,label\na,b,entailment\n,c,entailment\n", {},
     r"line 3 of .*pairs\.csv.*premise"),
    ("a tab inside a TSV text", "pairs.tsv", b"premise\thypothesis\tlabel\na\tb\tc\tentailment\n", {},
     r"^line 2 of .*pairs\.tsv: 4 fields, the header has 3 \(a tab inside a text\?\)$"),
    ("a tab inside a later TSV text", "pairs.tsv",
     b"premise\thypothesis\tlabel\nx\ty\tentailment\na\tb\tc\tentailment\n", {}, r"pairs\.tsv.*line 3, saw 4"),
    ("a header naming a column twice", "pairs.csv", b"premise,hypothesis,label,premise\na,b,entailment,c\n", {},
     r"^.*pairs\.csv: the header names a column twice \('premise' is column 1 and 4\); rename one, or the first "
     r"would be read and the other silently ignored$"),
    ("a bare carriage return inside an unquoted text", "pairs.csv",
     b"premise,hypothesis,label\na,b,entailment\nbroken\rtext,c,not_entailment\n", {},
     r"^line 3 of .*pairs\.csv: 1 field, the header has 3 \(a stray line break split the row: a bare carriage "
     r"return, or a newline inside an unquoted text\?\)$"),
    ("a JSON array of lists, not of objects", "pairs.json", b'[["a", "b", "entailment"]]', {},
     r"^.*pairs\.json: a JSON array whose item 1 is not an object; give one object per row, as JSON Lines \(one per "
     r"line\) or one array of objects$"),
]


@pytest.mark.parametrize("name, content, source, message", [case[1:] for case in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
def test_a_data_file_mistake_names_the_file_and_line(tmp_path, name, content, source, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_split(source, path, *NLI)


def test_a_json_file_holding_one_array_of_records_is_read_as_its_rows(tmp_path):
    rows = [{"premise": "a", "hypothesis": "b", "label": "entailment"},
            {"premise": "c", "hypothesis": "d", "label": "not_entailment"}]
    (tmp_path / "pairs.json").write_text(json.dumps(rows, indent=2))
    split = read_split({}, tmp_path / "pairs.json", *NLI)
    assert split.rows[["premise", "hypothesis", "label"]].to_dict("records") == [
        {"premise": "a", "hypothesis": "b", "label": 0}, {"premise": "c", "hypothesis": "d", "label": 1}]
    (tmp_path / "pairs.json").write_text(json.dumps(rows[:1] + [dict(rows[1], label="neutral")]))
    with pytest.raises(DataError, match=r"^record 2 of .*pairs\.json: .*'neutral'"):
        read_split({}, tmp_path / "pairs.json", *NLI)


def test_every_alternative_of_the_schema_is_said_as_a_person_would_act_on_it():
    """Every oneOf/anyOf of the schema: a value that fits none of its alternatives is told what they are."""
    from lmadapt.config import load_schema

    def alternatives(node, path=""):
        if isinstance(node, dict):
            found = [path + "/" + key for key in ("oneOf", "anyOf") if key in node]
            return found + [f for key, value in node.items() for f in alternatives(value, f"{path}/{key}")]
        return [f for i, value in enumerate(node) for f in alternatives(value, f"{path}[{i}]")] \
            if isinstance(node, list) else []

    assert sorted(alternatives(load_schema())) == sorted([  # each one below; a new one needs its case here
        "/$defs/source/oneOf", "/$defs/source/oneOf[1]/not/anyOf", "/$defs/task/properties/n_test/oneOf",
        "/$defs/model/properties/extract/properties/layers/oneOf", "/properties/extract/properties/layers/oneOf"])
    said = {"extract.layers: 5 is not valid; give 'all', or a list of at least 1 integer(s), each once":
            setting("extract.layers", 5),
            "models.opt.extract.layers: [] is not valid; give 'all', or a list of at least 1 integer(s), each once":
            setting("models.opt.extract", {"layers": []}),
            "tasks.rte.n_test: 'half' is not valid; give an integer >= 1, or 'all'":
            lambda c: c["tasks"]["rte"].update(n_test="half"),
            "tasks.rte.data.train: give `path` (a local file, inside `package` where set) without `hub`, or `hub` (a "
            "hub dataset) without `path` or `package`": lambda c: c["tasks"]["rte"]["data"]["train"].update(hub="x"),
            "tasks.rte.ood.hans: give `path` (a local file, inside `package` where set) without `hub`, or `hub` (a hub "
            "dataset) without `path` or `package`": lambda c: c["tasks"]["rte"]["ood"]["hans"].pop("path")}
    for message, change in said.items():
        config = base()
        change(config)
        with pytest.raises(ConfigError) as refused:
            check_config(config)
        assert str(refused.value).splitlines()[1:] == [f"  {message}"]


def leaky_task(tmp_path, overlap=None):
    """RTE whose test file repeats two training pairs (one with other case and spacing)."""
    train = pd.read_csv(FIXTURES / "glue_rte/train.tsv", sep="\t")
    test = pd.read_csv(FIXTURES / "glue_rte/dev.tsv", sep="\t")
    test.loc[0, ["sentence1", "sentence2"]] = train.loc[1, ["sentence1", "sentence2"]].to_numpy()
    test.loc[1, ["sentence1", "sentence2"]] = [train.loc[2, "sentence1"].upper(), "  " + train.loc[2, "sentence2"]]
    test.to_csv(tmp_path / "dev.tsv", sep="\t", index=False)
    task = rte_task(n_test=8, demonstrations=1, **({"overlap": overlap} if overlap else {}))
    task["data"]["test"]["path"] = str(tmp_path / "dev.tsv")
    inputs = {"train": str(FIXTURES / "glue_rte/train.tsv"), "test": str(tmp_path / "dev.tsv"),
              "ood:hans": str(FIXTURES / "hans/heuristics_evaluation_set.txt")}  # read where overlaps drop
    return check_config({"tasks": {"rte": task}})["tasks"]["rte"], inputs


def test_a_test_file_that_repeats_training_texts_is_refused_naming_both_files(tmp_path):
    task, inputs = leaky_task(tmp_path)
    for split, k in (("train", 2), ("demos", None)):
        with pytest.raises(DataError, match=r"^tasks\.rte: 4 training row\(s\) of .*train\.tsv share their text with "
                                            r"the test sample of .*dev\.tsv; .* set tasks\.rte\.overlap: drop"):
            run_sample("rte", task, inputs, split, tmp_path / f"{split}.parquet", k=k, seed=1)
        assert not (tmp_path / f"{split}.parquet").exists()


def test_the_workflow_and_validate_config_refuse_leaks_and_files_a_sample_job_would_refuse_before_any_job(tmp_path):
    """The files at hand are read as the workflow loads: a test file repeating training texts (a leak), an
    out-of-domain set with a label the task does not declare and a training file whose header names a column twice
    stop it before any job, with the lines `lmadapt validate-config` gives."""
    import subprocess

    from conftest import BIN, clean_env, fixture_config, run_snakemake, write_config

    leaky_task(tmp_path)
    hans = pd.read_csv(FIXTURES / "hans/heuristics_evaluation_set.txt", sep="\t")
    hans.loc[3, "gold_label"] = "contradiction"
    hans.to_csv(tmp_path / "hans.txt", sep="\t", index=False)
    (tmp_path / "tweets.csv").write_text("text,label,text\nsunny again,2,x\nrain,0,y\n")
    config = fixture_config()
    config["tasks"]["rte"]["data"]["test"]["path"] = str(tmp_path / "dev.tsv")
    config["tasks"]["rte"]["ood"]["hans"]["path"] = str(tmp_path / "hans.txt")
    config["tasks"]["tweets"]["data"]["train"] = {"path": str(tmp_path / "tweets.csv")}
    path = write_config(tmp_path / "config.yaml", config)
    validate = subprocess.run([str(BIN / "lmadapt"), "validate-config", str(path), "--directory", str(tmp_path)],
                              capture_output=True, text=True, env=clean_env())
    said = validate.stderr.splitlines()
    assert validate.returncode == 2 and said[0] == f"lmadapt validate-config: error: {path}: invalid configuration:"
    assert said[1] == (f"  tasks.rte.ood.hans: line 5 of {tmp_path / 'hans.txt'} (id ex3): column 'gold_label': "
                       f"label 'contradiction' is not one of the declared labels ['entailment', 'not_entailment'] "
                       f"(nor an index 0-1); map it with `label_map` or drop it with `exclude_labels`"), said
    assert said[2].startswith(f"  tasks.rte: 4 training row(s) of {FIXTURES / 'glue_rte/train.tsv'} share their text "
                              f"with the test sample of {tmp_path / 'dev.tsv'}; a test text in training leaks the "
                              f"answer."), said
    assert said[3] == (f"  tasks.tweets.data.train: {tmp_path / 'tweets.csv'}: the header names a column twice ('text' "
                       f"is column 1 and 3); rename one, or the first would be read and the other silently ignored")
    proc = run_snakemake(tmp_path, "--configfile", str(path), "-n", check=False)
    assert proc.returncode != 0 and not (tmp_path / "results").exists()
    assert all(line.strip() in proc.stdout + proc.stderr for line in said[1:])  # the workflow says the same
    assert list((tmp_path / ".snakemake/lmadapt").glob("sources-*.json"))  # the next plan reads no data


def test_overlap_drop_leaves_the_shared_rows_out_of_training_and_counts_them(tmp_path):
    task, inputs = leaky_task(tmp_path, overlap="drop")
    test = pd.read_csv(tmp_path / "dev.tsv", sep="\t")
    shared = {" ".join(s.split()).casefold() for s in test["sentence1"]}
    for split, k in (("train", 5), ("demos", None)):
        meta = run_sample("rte", task, inputs, split, tmp_path / f"{split}.parquet", k=k, seed=1)
        assert meta["dropped_overlap"] == {"test": 4}  # the fixture holds each of the two pairs twice
        rows = pd.read_parquet(tmp_path / f"{split}.parquet")
        assert not {" ".join(s.split()).casefold() for s in rows["premise"]} & shared
    with pytest.raises(DataError, match=r"class 'entailment' \(label 0\) has 6 example\(s\) available"):
        run_sample("rte", task, inputs, "train", tmp_path / "k6.parquet", k=6, seed=1)  # 8 - 2 dropped; 1 in the pool


def test_an_out_of_domain_set_that_repeats_training_texts_is_refused_by_the_preflight(tmp_path):
    from lmadapt.io import read_table
    from lmadapt.preflight import overlap_check

    hans = pd.read_csv(FIXTURES / "hans/heuristics_evaluation_set.txt", sep="\t")
    train = pd.read_csv(FIXTURES / "glue_rte/train.tsv", sep="\t")
    hans.loc[0, ["sentence1", "sentence2"]] = train.loc[0, ["sentence1", "sentence2"]].to_numpy()
    hans.to_csv(tmp_path / "hans.txt", sep="\t", index=False)
    spec = rte_task(k=[2], demonstrations=1)
    spec["ood"]["hans"]["path"] = str(tmp_path / "hans.txt")
    config = check_config({"tasks": {"rte": spec}})
    task = config["tasks"]["rte"]
    inputs = {"train": str(FIXTURES / "glue_rte/train.tsv"), "test": str(FIXTURES / "glue_rte/dev.tsv"),
              "ood:hans": str(tmp_path / "hans.txt")}
    samples = tmp_path / "samples/rte"
    for split, k in (("train", 7), ("demos", None), ("test", None), ("ood:hans", None)):
        run_sample("rte", task, inputs, split, samples / f"{split.replace(':', '_')}.parquet", k=k, seed=1)
    (samples / "train.parquet").rename(samples / "train_k7_seed1.parquet")
    (samples / "demos.parquet").rename(samples / "demos_seed1.parquet")
    problems, notes = overlap_check(config, tmp_path / "samples", lambda path: read_table(path, "lmadapt")[0])
    leak = overlap_message("rte", 2, samples / "train_k7_seed1.parquet", "ood:hans", samples / "ood_hans.parquet")
    assert leak == (f"tasks.rte: 2 training row(s) of {samples / 'train_k7_seed1.parquet'} share their text with the "
                    f"ood:hans sample of {samples / 'ood_hans.parquet'}; a test text in training leaks the answer. "
                    f"Remove them, or set tasks.rte.overlap: drop to leave them out of training")
    assert not notes and problems == [leak]  # the pair is in the fixture twice; the demonstration pool holds neither
    # with drop, the training samples' jobs read the out-of-domain set and leave the pair out
    task = check_config({"tasks": {"rte": dict(spec, overlap="drop")}})["tasks"]["rte"]
    meta = run_sample("rte", task, inputs, "train", samples / "train_k5_seed1.parquet", k=5, seed=1)
    assert meta["dropped_overlap"] == {"ood:hans": 2}
    problems, notes = overlap_check(check_config({"tasks": {"rte": dict(spec, overlap="drop")}}),
                                    tmp_path / "samples", lambda path: read_table(path, "lmadapt")[0])
    assert problems == [leak]  # the sample drawn before the switch still holds them
    assert notes == [dict(stage="sample", model="-", task="rte", sample="train_k5_seed1", what="2 training row(s) left "
                          "out: they share their text with the ood:hans sample (tasks.rte.overlap: drop)")]


def test_verbalizers_a_tokenizer_cannot_tell_apart_are_refused_before_the_weights_load(tiny_opt, tmp_path):
    from lmadapt.finetune import run_finetune
    from lmadapt.icl import run_icl

    tokens = load_tokens(tiny_opt)
    spec = rte_task(prompt={"patterns": {"p": {"template": "{premise} {hypothesis}", "verbalizer": {
        "entailment": " yes it is", "not_entailment": " yes it is not"}}}})
    task = check_config({"tasks": {"rte": spec}})["tasks"]["rte"]
    shared_first = task_pattern(task)
    assert verbalizer_problems(tokens, shared_first, first_token=False) == []  # ICL sums whole verbalizers
    first = tokens.encode(" yes")[0]
    assert verbalizer_problems(tokens, shared_first, first_token=True) == [
        f"pattern 'p': labels ['entailment', 'not_entailment'] (' yes it is', ' yes it is not') have the same first "
        f"token [{first}]: the scorer cannot tell them apart"]
    # a folder with the tokenizer and no weights: the job refuses before it would need them
    folder = tmp_path / "no_weights"
    shutil.copytree(tiny_opt, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with pytest.raises(PromptError, match=r"have the same first token"):
        run_finetune(str(folder), task, "unused.parquet", {}, str(tmp_path / "m.json"),
                     section_settings("finetune", {"pattern": None}),
                     {"task": "rte", "model": "tiny", "method": "pattern", "k": 2, "seed": 1}, str(tmp_path / "w"),
                     "unused.json")
    task["prompt"]["patterns"]["p"]["verbalizer"]["entailment"] = ""  # as a job run by hand may get it
    with pytest.raises(PromptError, match=r"the verbalizer of 'entailment' \(''\) tokenizes to nothing"):
        run_icl(str(folder), task, None, {}, str(tmp_path / "i.json"),
                section_settings("icl", {"patterns": [], "dtype": "float32"}),
                {"task": "rte", "model": "tiny", "k": 0, "seed": 1})


def test_validate_config_says_what_the_workflow_would_say_as_it_loads(tmp_path, tiny_opt):
    import subprocess

    from conftest import BIN, clean_env, fixture_config, write_config

    config = fixture_config(tiny_opt)
    config["extract"]["layers"] = [1, 99]
    (tmp_path / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    config["tasks"]["rte"]["data"]["test"]["path"] = str(tmp_path / "dev.tsv")
    path = write_config(tmp_path / "config.yaml", config)
    proc = subprocess.run([str(BIN / "lmadapt"), "validate-config", str(path), "--directory", str(tmp_path)],
                          capture_output=True, text=True, env=clean_env())
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"lmadapt validate-config: error: {path}: invalid configuration:",
        "  extract.layers: layer 99 is out of range for model tiny, which has 3 layers (0..3, or -1..-4)",
        f"  tasks.rte.data.test: {tmp_path / 'dev.tsv'}: no data rows (only a header line)"]


def test_one_overlong_example_is_left_out_and_counted_the_rest_scored_as_the_preflight_predicts(short_context,
                                                                                                  tmp_path):
    """Six test examples, one far longer than the tiny model's 256-token context: under fit skip_examples the five
    that fit are scored (as a sample of those five alone would be), the sixth is counted with its id, the table
    marks the cell, and the preflight predicted the count (check-skips compares them)."""
    from lmadapt.aggregate import build_table, load_records
    from lmadapt.icl import run_icl
    from lmadapt.plan import skipped_cells
    from lmadapt.preflight import run_preflight

    dev = pd.read_csv(FIXTURES / "glue_rte/dev.tsv", sep="\t").iloc[:6].copy()
    dev.loc[2, "sentence1"] = " ".join(["word"] * 3000)
    dev.to_csv(tmp_path / "dev.tsv", sep="\t", index=False)
    dev.drop(index=2).to_csv(tmp_path / "five.tsv", sep="\t", index=False)
    spec = rte_task(k=[2], n_test=6, prompt={"patterns": PATTERNS}, demonstrations=3, ood={})
    spec["data"]["test"]["path"] = str(tmp_path / "dev.tsv")
    models = short_context / "models"
    config = check_config({"seeds": [1], "tasks": {"rte": spec}, "models": {"tiny": {"id": str(models / "tiny"),
                                                                                      "gpus": 0}},
                           "extract": {"shots": 2}, "finetune": {"methods": ["head"]},
                           "icl": {"shots": [0], "patterns": ["gpt3"], "fit": "skip_examples"}})
    task, samples = config["tasks"]["rte"], tmp_path / "samples/rte"
    inputs = {"train": str(FIXTURES / "glue_rte/train.tsv"), "test": str(tmp_path / "dev.tsv")}
    for name, split, kwargs in (("train_k2_seed1", "train", {"k": 2, "seed": 1}), ("demos_seed1", "demos", {"seed": 1}),
                                ("test", "test", {})):
        run_sample("rte", task, inputs, split, samples / f"{name}.parquet", **kwargs)
    run_sample("rte", dict(task, n_test="all"), dict(inputs, test=str(tmp_path / "five.tsv")), "test",
               tmp_path / "five.parquet")
    plan = run_preflight(config, tmp_path / "samples", models, tmp_path / "plan.json", tmp_path / "plan.md")

    def icl(test: str, fit: str) -> list[dict]:
        settings = section_settings("icl", dict(config["icl"], fit=fit, dtype="float32"))
        run_icl(str(models / "tiny"), task, None, {"test": test}, str(tmp_path / f"{fit}.json"), settings,
                {"task": "rte", "model": "tiny", "k": 0, "seed": 1})
        return json.loads((tmp_path / f"{fit}.json").read_text())["records"]

    [left_out] = icl(str(samples / "test.parquet"), "skip_examples")
    long_id = str(dev.loc[2, "index"])
    assert left_out["n"] == 5 and left_out["skipped_examples"] == 1 and left_out["skipped"] is None
    assert left_out["details"]["skipped_example_ids"] == [long_id]
    [five] = icl(str(tmp_path / "five.parquet"), "skip")
    assert (five["n"], five["accuracy"], five["confusion"]) == (5, left_out["accuracy"], left_out["confusion"])
    [skipped] = icl(str(samples / "test.parquet"), "skip")  # the default: the whole cell, as before
    assert skipped["n"] == 0 and skipped["skipped"]["reason"] == "prompt does not fit the context"

    tidy = load_records([str(tmp_path / "skip_examples.json")])
    predicted, recorded = skipped_cells(plan, tidy)
    assert predicted == recorded == {("tiny", "rte", "gpt3", 0, 1, "left out", 1)}
    text, _ = build_table(tidy, {"methods": ["icl"], "rows": ["model"], "columns": ["split"], "splits": [],
                                 "groups": False}, "accuracy")
    assert text.loc["tiny", "test"].endswith("(1)‡")
