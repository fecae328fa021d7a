import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
BIN = Path(sys.executable).parent  # the environment's console scripts: lmadapt, snakemake


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory):
    from lmadapt.testing import build_tiny_opt

    return build_tiny_opt(tmp_path_factory.mktemp("tiny_opt"))


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


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra) -> dict:
    """This process's environment without the process-group variables that in-process DeepSpeed tests set
    (a job must not believe it was started by torchrun), with the environment's scripts on the PATH."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    return dict(env, PATH=f"{BIN}{os.pathsep}{env['PATH']}", **extra)


def run_snakemake(workdir: Path, *args, check=True, env=None):
    env = env or clean_env()
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--cores", "2", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc
