"""What the config and the files at hand already tell, before any job: the one list the workflow checks as it
loads (workflow/rules/common.smk) and `lmadapt validate-config` prints, so that "valid" means the workflow starts.
Torch-free: model folders are read by their config.json only."""
from __future__ import annotations

import json
from pathlib import Path

from .config import (fingerprint, layer_problems, model_kind_problems, prepared_problems, source_file_role,
                     task_sources)
from .data import empty_sources, resolve_path
from .errors import DataError
from .io import write_text
from .sample import overlap_problems


def start_problems(config: dict, root: str | Path = ".") -> list[str]:
    """For a checked config run in the working directory `root`: a prepared model or fetched dataset whose
    identity the config now changes (the fetch would replace it), layers a model does not have, a stage or method
    a model's kind cannot run, a data file without rows, training rows that share a text with a test or
    out-of-domain sample."""
    models = Path(root) / "resources/models"
    return (prepared_problems(config, root) + layer_problems(config, models) + model_kind_problems(config, models)
            + empty_sources(config) + leak_problems(config, root))


def leak_problems(config: dict, root: str | Path = ".") -> list[str]:
    """sample.overlap_problems of every task whose files are at hand (local files; hub datasets once fetched).
    Reading a large dataset takes seconds, so the answer is kept in .snakemake/lmadapt/ by the files' size and
    modification time and the task's settings: a plan of an unchanged grid reads no data."""
    problems = []
    for task_name, task in sorted(config["tasks"].items()):
        paths = {}
        for key, source in task_sources(task).items():
            role = source_file_role(key)
            path = Path(root) / "resources/data" / task_name / f"{role}.parquet" if source.get("hub") else \
                resolve_path(source)
            if path.exists():
                paths[role.replace("ood_", "ood:", 1)] = path
        if "train" not in paths:
            continue
        stats = {role: [str(path), path.stat().st_size, path.stat().st_mtime_ns] for role, path in paths.items()}
        cache = Path(root) / ".snakemake/lmadapt" / f"overlap-{fingerprint([task, config['test_seed'], stats])}.json"
        if cache.is_file():
            problems += json.loads(cache.read_text())
            continue
        try:
            found = overlap_problems(task_name, task, {role: str(path) for role, path in paths.items()},
                                     config["test_seed"])
        except DataError:  # a file that cannot be read: its own check and the sample job say why
            continue
        write_text(json.dumps(found), cache)
        problems += found
    return problems
