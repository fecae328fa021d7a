"""The layout owns every path pattern and the sample name; nothing else spells one."""
import re

import pytest

from conftest import REPO
from lmadapt import layout
from lmadapt.layout import SampleName


@pytest.mark.parametrize("name, parsed", [
    ("train_k8_seed1", SampleName("train", 8, 1)), ("train_kall_seed3", SampleName("train", "all", 3)),
    ("demos_seed2", SampleName("demos", seed=2)), ("test", SampleName("test")),
    ("instructions", SampleName("instructions")), ("ood_hans", SampleName("ood", ood="hans"))])
def test_a_sample_name_parses_and_prints_back(name, parsed):
    assert SampleName.parse(name) == parsed and str(parsed) == name
    assert re.fullmatch(SampleName.PATTERN, name)  # the rules' {sample} wildcard takes it


def test_a_name_that_is_no_sample_is_refused():
    for name in ("train_k8", "demos", "ood_", "validation", "train_k8_seed1.parquet"):
        with pytest.raises(ValueError, match="is not a sample name"):
            SampleName.parse(name)
    assert SampleName.parse("ood_hans").role == "ood:hans" and SampleName.parse("test").role == "test"


def test_logs_and_benchmarks_follow_each_rule_s_cell():
    assert layout.log("extract") == "results/logs/extract/{model}/{task}/{prompt}/{sample}.log"
    assert layout.benchmark("finetune") == "results/benchmarks/finetune/{model}/{task}/{method}/k{k}_seed{seed}.tsv"
    assert layout.log("aggregate") == "results/logs/aggregate.log"
    assert layout.benchmark("aggregate") == "results/benchmarks/aggregate/aggregate.tsv"
    rules = set(re.findall(r"^(?:rule|checkpoint) (\w+):", "".join(
        p.read_text() for p in (REPO / "workflow/rules").glob("*.smk")), re.M))
    assert rules == set(layout.CELLS)  # every rule's log and benchmark come from here
    for stage, pattern in layout.METRICS.items():  # a metrics file's cell is its job's cell
        assert pattern.endswith(layout.CELLS[stage] + ".json")


def test_a_fetch_rule_s_pattern_gives_the_folder_and_glob_of_what_it_prepared():
    assert layout.folder_and_glob(layout.DATASET) == ("resources/data", "*/*.parquet")
    assert layout.folder_and_glob(layout.PREPARED_MODEL) == ("resources/models", "*")


def code_lines(path):
    """A file's lines without comments (a comment may name a path to explain it)."""
    return [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if not line.lstrip().startswith("#")]


def test_no_path_pattern_is_spelled_outside_the_layout():
    spelled = re.compile(r"""["'](results|resources)/|(results|resources)/[a-z_/]*\{|train_k\{|_seed\{""")
    files = [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk")),
             *sorted(p for p in (REPO / "workflow/lmadapt").glob("*.py") if p.name != "layout.py")]
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in files for n, line in code_lines(path)
             if spelled.search(line) and "help=" not in line]
    assert not found, "\n".join(found)
