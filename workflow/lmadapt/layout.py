"""Where every artifact lives: the one home of the workflow's path patterns (rules take their `output:`, `log:` and
`benchmark:` from here; targets and the preflight format the same patterns; `producing_rule` names the rule that
remakes an unreadable intermediate) and of the sample name (`train_k8_seed1`, `demos_seed1`, `test`,
`instructions`, `ood_hans`), which `SampleName` parses and writes.

A pattern's {fields} are the rule's wildcards; a job's log and benchmark follow its cell:
results/logs/<rule>/<cell>.log and results/benchmarks/<rule>/<cell>.tsv (a rule with one job: results/logs/<rule>.log
and results/benchmarks/<rule>/<rule>.tsv). Changing a pattern moves finished results: don't."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# fetched and prepared resources (login node; never replaced)
DATASET = "resources/data/{task}/{role}.parquet"
CORPUS = "resources/corpora/{corpus}.parquet"
PREPARED_MODELS = "resources/models"
PREPARED_MODEL = PREPARED_MODELS + "/{model}"
DERIVED_MODEL = "results/models/{model}"
# per cell
SAMPLES = "results/samples"
SAMPLE = SAMPLES + "/{task}/{sample}.parquet"
TRAIN_SAMPLE = SAMPLE.replace("{sample}", "train_k{k}_seed{seed}")  # a rule's input, by its k and seed
ACTIVATIONS = "results/activations/{model}/{task}/{prompt}/{sample}.parquet"
TEACHER = "results/teacher/{model}/{task}/k{k}_seed{seed}.parquet"
METRICS_DIR = "results/metrics"
# a grid stage's cells (stages.py): results/metrics/<stage>/..., so that the folder names the rule that writes it
METRICS = {
    "probe": "results/metrics/probe/{model}/{task}/{prompt}/k{k}_seed{seed}.json",
    "bow": "results/metrics/bow/{task}/k{k}_seed{seed}.json",
    "icl": "results/metrics/icl/{model}/{task}/shots{shots}_seed{seed}.json",
    "finetune": "results/metrics/finetune/{model}/{task}/{method}/k{k}_seed{seed}.json",
}
FINETUNE_WORK = "results/finetune/{model}/{task}/{method}/k{k}_seed{seed}"
DERIVE_METRICS = "results/derive/{model}/metrics.json"
DERIVE_GENERATIONS = "results/derive/{model}/generations.parquet"
DERIVE_WORK = "results/derive/{model}/work"
# the whole grid's
DERIVE_SUMMARY = "results/derive/summary.md"
PREFLIGHT_JSON = "results/plan/preflight.json"
PREFLIGHT_MD = "results/plan/preflight.md"
RUNTIMES = "results/plan/runtimes.md"
RESOLVED_CONFIG = "results/plan/config.yaml"
TABLES = "results/tables"
FIGURES = "results/figures"
TIDY = "results/tables/all.parquet"
BENCHMARKS = "results/benchmarks"
CALIBRATION_JSON = "results/plan/calibration.json"  # of the grid's finished jobs (rule calibration)
CALIBRATION_MD = "results/plan/calibration.md"
PILOT_CALIBRATION_JSON = "results/plan/pilot/calibration.json"  # of the pilot's cells (rule pilot), until then
PILOT_CALIBRATION_MD = "results/plan/pilot/calibration.md"
STATUS_MD = "results/plan/status.md"
# what a model job measured of itself (Cost, with its work in the preflight's units), beside its benchmark file:
# the calibration reads them; no rule declares them (how a job ran is not what it computed)
COST = BENCHMARKS + "/{rule}/{cell}.json"
# the file each model rule writes that names its cell (its cost record is found from it)
MODEL_OUTPUTS = {"extract": ACTIVATIONS, "teacher": TEACHER, "icl": METRICS["icl"], "finetune": METRICS["finetune"],
                 "instruct": DERIVE_METRICS, "classifier": DERIVE_METRICS, "ppo": DERIVE_METRICS}
# the file whose presence says a job of the grid finished (lmadapt status)
OUTPUTS = MODEL_OUTPUTS | {"sample": SAMPLE, "probe": METRICS["probe"], "bow": METRICS["bow"],
                           "preflight": PREFLIGHT_JSON, "aggregate": TIDY, "resolved_config": RESOLVED_CONFIG}

# each rule's cell: the part of its log's and benchmark's path after the rule's folder ("": one job)
CELLS = {
    "fetch_data": "{task}/{role}", "fetch_corpus": "{corpus}", "fetch_model": "{model}",
    "sample": "{task}/{sample}", "extract": "{model}/{task}/{prompt}/{sample}",
    "probe": "{model}/{task}/{prompt}/k{k}_seed{seed}", "bow": "{task}/k{k}_seed{seed}",
    "icl": "{model}/{task}/shots{shots}_seed{seed}", "teacher": "{model}/{task}/k{k}_seed{seed}",
    "finetune": "{model}/{task}/{method}/k{k}_seed{seed}",
    "instruct": "{model}", "classifier": "{model}", "ppo": "{model}",
    "preflight": "", "aggregate": "", "derived_summary": "", "runtimes": "", "resolved_config": "", "calibration": "",
    "pilot": "",
}


def producing_rule(path) -> str | None:
    """The rule whose output an intermediate is, named when the file is unreadable: a sample's, an activation's,
    a teacher's, or a grid stage's metrics file (results/metrics/<stage>/..., written by the stage's rule)."""
    text = Path(path).as_posix()
    for folder, rule in ((SAMPLES, "sample"), (folder_and_glob(ACTIVATIONS)[0], "extract"),
                         (folder_and_glob(TEACHER)[0], "teacher")):
        if f"{folder}/" in text:
            return rule
    stage = re.search(rf"(?:^|/){METRICS_DIR}/(\w+)/", text)
    return stage.group(1) if stage else None


def folder_and_glob(pattern: str) -> tuple[str, str]:
    """The folder of a pattern's files and the glob of every file it names below it (fields as *):
    resources/data/{task}/{role}.parquet -> (resources/data, */*.parquet)."""
    folder, rest = pattern.split("/{", 1)
    return folder, re.sub(r"\{\w+\}", "*", "{" + rest)


def log(rule: str) -> str:
    cell = CELLS[rule]
    return f"results/logs/{rule}/{cell}.log" if cell else f"results/logs/{rule}.log"


def benchmark(rule: str) -> str:
    return f"{BENCHMARKS}/{rule}/{CELLS[rule] or rule}.tsv"


def cost_record(rule: str, output) -> Path | None:
    """Where a model job writes what it measured: results/benchmarks/<rule>/<cell>.json, beside its benchmark file
    and under the same working directory as its output (None for an output outside the layout, a job run by hand
    into another folder)."""
    fields = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(MODEL_OUTPUTS[rule]))
    found = re.fullmatch(rf"(?P<root>(?:.*/)?){fields}", Path(output).as_posix())
    if found is None:
        return None
    return Path(found["root"] + COST.format(rule=rule, cell=CELLS[rule].format(**found.groupdict())))


@dataclass(frozen=True)
class SampleName:
    """A sample file's name: a training sample (`train_k8_seed1`; k `all`: the full training set), a seed's
    demonstration pool (`demos_seed1`), the test sample, a task's instruction set, an out-of-domain set
    (`ood_hans`)."""

    split: str  # train, demos, test, instructions, ood
    k: int | str | None = None
    seed: int | None = None
    ood: str | None = None

    PATTERN = r"train_k(\d+|all)_seed\d+|demos_seed\d+|test|instructions|ood_[a-z][a-z0-9_]*"  # the wildcard's

    @classmethod
    def parse(cls, name: str) -> SampleName:
        if not re.fullmatch(cls.PATTERN, name):
            raise ValueError(f"{name!r} is not a sample name ({cls.PATTERN})")
        if name.startswith("train_k"):
            k, seed = name.removeprefix("train_k").split("_seed")
            return cls("train", k if k == "all" else int(k), int(seed))
        if name.startswith("demos_seed"):
            return cls("demos", seed=int(name.removeprefix("demos_seed")))
        if name.startswith("ood_"):
            return cls("ood", ood=name.removeprefix("ood_"))
        return cls(name)

    def __str__(self) -> str:
        if self.split == "train":
            return f"train_k{self.k}_seed{self.seed}"
        if self.split == "demos":
            return f"demos_seed{self.seed}"
        return f"ood_{self.ood}" if self.split == "ood" else self.split

    @property
    def role(self) -> str:
        """The split as `lmadapt sample --split` and the metrics records name it (ood:<name>)."""
        return f"ood:{self.ood}" if self.split == "ood" else self.split


def train_sample(k, seed) -> str:
    return str(SampleName("train", k, seed))


def demonstration_pool(seed) -> str:
    return str(SampleName("demos", seed=seed))


def eval_splits(task: dict) -> list[str]:
    """A task's evaluation samples by name: the test sample, then each out-of-domain set."""
    return ["test"] + [str(SampleName("ood", ood=name)) for name in task["ood"]]


def sample_path(task: str, name: SampleName | str) -> str:
    return SAMPLE.format(task=task, sample=name)


def prompt_folder(prompt: str, seed) -> str:
    """The activations' folder of a probe's prompt: `none` is shared by every cell; `fewshot` is one per seed's
    pool (fewshot_seed<seed>)."""
    return "none" if prompt == "none" else f"fewshot_seed{seed}"


def prefix_seed(folder: str) -> int | None:
    """The pool's seed of an activations folder (None for `none`)."""
    return None if folder == "none" else int(folder.removeprefix("fewshot_seed"))
