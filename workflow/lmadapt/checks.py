"""What the config and the files at hand already tell, before any job: the one list the workflow checks as it
loads (workflow/rules/common.smk) and `lmadapt validate-config` prints, so that "valid" means the workflow starts.
Torch-free: model folders are read by their config.json only."""
from __future__ import annotations

from pathlib import Path

from .config import layer_problems, model_kind_problems, prepared_problems
from .data import empty_sources


def start_problems(config: dict, root: str | Path = ".") -> list[str]:
    """For a checked config run in the working directory `root`: a prepared model or fetched dataset whose
    identity the config now changes (the fetch would replace it), layers a model does not have, a stage or method
    a model's kind cannot run, a data file without rows."""
    models = Path(root) / "resources/models"
    return (prepared_problems(config, root) + layer_problems(config, models) + model_kind_problems(config, models)
            + empty_sources(config))
