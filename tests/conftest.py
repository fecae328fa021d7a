import base64
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lmadapt.settings import read_settings

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
BIN = Path(sys.executable).parent  # the environment's console scripts: lmadapt, snakemake


def module_marks(module) -> set[str]:
    marks = getattr(module, "pytestmark", [])
    return {mark.name for mark in (marks if isinstance(marks, list) else [marks])}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """For `make test-all`'s two workers (pytest-xdist, --dist loadgroup): a module's tests stay on one worker
    (they share its fixtures), every test of the shared finished run with the worker that built it, and the
    modules that are one long run each (the slow tier's whole-module studies) go first, so that they start at
    once on separate workers and the rest fills in around them."""
    for item in items:
        group = "finished_run" if "finished_run" in item.fixturenames else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
    whole_module_slow = {item.module for item in items if "slow" in module_marks(item.module)}
    items.sort(key=lambda item: item.module not in whole_module_slow)  # stable: each module's order kept


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory):
    from lmadapt.testing import build_tiny_opt

    return build_tiny_opt(tmp_path_factory.mktemp("tiny_opt"))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    from lmadapt.testing import build_tiny_t5

    return build_tiny_t5(tmp_path_factory.mktemp("tiny_t5"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    from lmadapt.testing import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def rte_task(**overrides):
    """The RTE task in its official GLUE layout, with HANS out of domain, over the fixture files."""
    task = {
        "fields": ["premise", "hypothesis"],
        "labels": ["entailment", "not_entailment"],
        "k": [2, 3],
        "n_test": 6,
        "demonstrations": 0,  # 8 rows per class: the tests that need a pool set one
        "data": {
            "train": {"path": str(FIXTURES / "glue_rte/train.tsv"), "format": "glue_rte"},
            "test": {"path": str(FIXTURES / "glue_rte/dev.tsv"), "format": "glue_rte"},
        },
        "ood": {"hans": {"path": str(FIXTURES / "hans/heuristics_evaluation_set.txt"), "format": "hans",
                         "label_map": {"non-entailment": "not_entailment"}}},
    }
    task.update(overrides)
    return task


@pytest.fixture(scope="session")
def rte_samples(tmp_path_factory):
    """RTE samples of the fixture files (the task with PATTERNS), each drawn once per session:
    `rte_samples(k, demonstrations)` is (task, folder) with train.parquet (k per class, seed 1), test.parquet,
    ood_hans.parquet and, with a pool of `demonstrations` per class, demos.parquet (seed 1)."""
    from lmadapt.checks import check_config
    from lmadapt.sample import run_sample

    root, drawn = tmp_path_factory.mktemp("rte_samples"), {}
    inputs = {"train": str(FIXTURES / "glue_rte/train.tsv"), "test": str(FIXTURES / "glue_rte/dev.tsv"),
              "ood:hans": str(FIXTURES / "hans/heuristics_evaluation_set.txt")}

    def draw(k: int, demonstrations: int = 0):
        if (k, demonstrations) not in drawn:
            folder = root / f"k{k}_demos{demonstrations}"
            spec = rte_task(prompt={"patterns": PATTERNS}, demonstrations=demonstrations)
            task = check_config({"tasks": {"rte": spec}})["tasks"]["rte"]
            run_sample("rte", task, inputs, "train", folder / "train.parquet", k=k, seed=1)
            run_sample("rte", task, inputs, "test", folder / "test.parquet")
            run_sample("rte", task, inputs, "ood:hans", folder / "ood_hans.parquet")
            if demonstrations:
                run_sample("rte", task, inputs, "demos", folder / "demos.parquet", seed=1)
            drawn[k, demonstrations] = task, folder
        return drawn[k, demonstrations]

    return draw


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra) -> dict:
    """This process's environment without the process-group variables that in-process DeepSpeed tests set
    (a job must not believe it was started by torchrun), with the environment's scripts on the PATH."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    return dict(env, PATH=f"{BIN}{os.pathsep}{env['PATH']}", **extra)


def kill_after_first_checkpoint(cmd, env, checkpoints: Path, output: Path):
    """Start a training job and SIGKILL it (as a Slurm timeout or preemption would) after its first checkpoint."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (checkpoints / "latest").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first checkpoint; make it longer"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not output.exists()


def run_snakemake(workdir: Path, *args, check=True, env=None):
    env = env or clean_env()
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--cores", "2", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def report_items(path) -> dict[str, str]:
    """The files a Snakemake HTML report embeds (a JSON object per file, its content a base64 data URI) and
    their text; images by name only."""
    items = {}
    for name, mime, data in re.findall(r'"(results/[^"]+)": \{"name".*?"data_uri": "data:([a-z/]+)[^,]*,([^"]*)"',
                                       path.read_text()):
        items[name] = base64.b64decode(data).decode() if mime.startswith("text/") else mime
    return items


LATEX_PACKAGES = ("texlive-latex-base", "texlive-latex-recommended")  # pdflatex; booktabs
APT_LOCK = "/var/lock/lmadapt-apt.lock"


@pytest.fixture(scope="session")
def pdflatex():
    """pdflatex, installed with apt where missing (as root); the test is skipped, with the reason, where it
    cannot be."""
    if not shutil.which("pdflatex"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip(f"no pdflatex, and no root apt-get to install {' '.join(LATEX_PACKAGES)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        with open(APT_LOCK, "w") as lock:  # one apt at a time (the Slurm start script takes the same lock)
            fcntl.flock(lock, fcntl.LOCK_EX)
            for command in (["apt-get", "update", "-qq"],
                            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *LATEX_PACKAGES]):
                proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
                if proc.returncode:
                    pytest.skip(f"could not install {' '.join(LATEX_PACKAGES)}: {proc.stderr.strip()[-300:]}")
    return shutil.which("pdflatex")


def compile_latex_tables(pdflatex: str, tables: list[Path], workdir: Path) -> None:
    """Each table inside a minimal article with booktabs, through pdflatex; fails naming the table and the
    LaTeX error."""
    for table in tables:
        document = workdir / f"{table.stem}_document.tex"
        document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                            f"\\input{{{table}}}\n\\end{{document}}\n")
        proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", document.name],
                              cwd=workdir, capture_output=True, text=True, timeout=120)
        errors = [line for line in proc.stdout.splitlines() if line.startswith("!")]
        assert proc.returncode == 0 and (workdir / f"{document.stem}.pdf").exists(), f"{table.name}: {errors}"


# Shared by the stage and workflow tests.
PATTERNS = {
    "gpt3": {"template": "{premise} question: {hypothesis} Yes or No? answer:",
             "verbalizer": {"entailment": " Yes", "not_entailment": " No"}},
    "long_words": {"template": "{premise}\nQuestion: {hypothesis} True or False?\nAnswer:",  # multi-token
                   "verbalizer": {"entailment": " entailment holds", "not_entailment": " it is not so"}},
}
EXTRACT_SETTINGS = read_settings("extract", {"layers": "all", "pooling": ["last", "mean"], "pattern": None, "shots": 3,
                                             "batch_size": 3, "max_length": None, "store_dtype": "float32",
                                             "dtype": "float32"})


def planned_jobs(proc) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run (or of a run: Snakemake prints it to stderr then)."""
    output = proc.stdout + proc.stderr
    stats = output.split("Job stats:")[1].split("\n\n")[0] if "Job stats:" in output else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m[1] != "total"}


def fixture_config(model_dir=None, encoder_dir=None):
    """The fixture workflow: RTE (with HANS) and tweets; with a decoder, every stage on it; with an encoder beside
    it, the encoder's activations, probes and classification head (it has no ICL)."""
    tweets = {"labels": ["negative", "neutral", "positive"], "k": [1], "n_test": 3, "demonstrations": 1,
              "data": {"train": {"path": str(FIXTURES / "tweet_sentiment/train.jsonl")}},
              "prompt": {"patterns": {"tweet": {"template": "{text} Sentiment:", "verbalizer": {
                  "negative": " negative", "neutral": " neutral", "positive": " positive"}}}}}
    config = {"seeds": [1, 2], "threads": 1,  # two jobs at a time on a 2-core machine
              "tasks": {"rte": rte_task(prompt={"patterns": PATTERNS}, demonstrations=3), "tweets": tweets}}
    if model_dir:
        config.update(models={"tiny": {"id": str(model_dir), "gpus": 0, "mem_mb": 1000}},
                      extract={"tasks": ["rte"], "shots": 2, "layers": [1, -1]},
                      probe={"mlp": {"epochs": 20}}, icl={"shots": [0, 2]},
                      finetune={"tasks": ["rte"], "k": [2], "methods": ["lora_pattern", "distill"], "epochs": 2,
                                "batch_size": 2, "effective_batch": 2, "distill": {"shots": 2}})
    if encoder_dir:
        config["models"]["bert"] = {"id": str(encoder_dir), "gpus": 0, "mem_mb": 1000,
                                    "finetune": {"methods": ["head"]}}
        config["icl"]["models"] = ["tiny"]
    return config


@dataclass(frozen=True)
class FinishedRun:
    workdir: Path
    config: Path  # the config file it ran with, in workdir

    def copy(self, to: Path) -> "FinishedRun":
        """A copy to change files in (the shared run stays as it finished); `to` may be an empty folder."""
        shutil.copytree(self.workdir, to, symlinks=True, dirs_exist_ok=True)
        return FinishedRun(to, to / self.config.name)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_opt, tiny_bert) -> FinishedRun:
    """The fixture workflow with a decoder and an encoder, run to the end once per session: every test that
    checks a finished run's outputs, report or staleness reads this one (dry runs change nothing; a test that
    changes files works on `copy()`)."""
    workdir = tmp_path_factory.mktemp("finished_run")
    config = write_config(workdir / "config.yaml", fixture_config(tiny_opt, tiny_bert))
    run_snakemake(workdir, "--configfile", str(config))
    return FinishedRun(workdir, config)


@pytest.fixture(scope="session")
def short_context(tmp_path_factory):
    """A tiny OPT with a 256-token context, and fixture RTE samples laid out as the rules write them."""
    from lmadapt.checks import check_config
    from lmadapt.sample import run_sample
    from lmadapt.testing import build_tiny_opt

    root = tmp_path_factory.mktemp("preflight")
    build_tiny_opt(root / "models/tiny", max_positions=256)
    task = check_config({"tasks": {"rte": rte_task(prompt={"patterns": PATTERNS}, demonstrations=3)}})["tasks"]["rte"]
    inputs = {"train": str(FIXTURES / "glue_rte/train.tsv"), "test": str(FIXTURES / "glue_rte/dev.tsv"),
              "ood:hans": str(FIXTURES / "hans/heuristics_evaluation_set.txt")}
    for name, split, kwargs in (("train_k2_seed1", "train", {"k": 2, "seed": 1}), ("demos_seed1", "demos", {"seed": 1}),
                                ("test", "test", {}), ("ood_hans", "ood:hans", {})):
        run_sample("rte", task, inputs, split, root / f"samples/rte/{name}.parquet", **kwargs)
    return root
