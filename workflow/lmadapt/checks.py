"""Every check of a config: `check_config` (the schema, defaults filled in, then what the schema cannot say:
cross-references, prompts that cannot tell classes apart, demonstrations a pool cannot supply, batches GPUs
cannot split) and `start_problems` (what the files at hand already tell, before any job: the one list the
workflow checks as it loads (workflow/rules/common.smk) and `lmadapt validate-config` prints, so that "valid"
means the workflow starts). Torch-free: model folders are read by their config.json only."""
from __future__ import annotations

import copy
import json
import math
import string
from pathlib import Path

from . import layout
from .config import (DERIVE_KINDS, INHERITED, MODEL_STAGES, ConfigError, check_schema, fingerprint, merge_settings,
                     read_yaml, setting_key, source_file_role, stage_config, task_sources, training_layout)
from .data import read_split, resolve_path, source_columns
from .errors import DataError
from .grid import demonstration_needs, stage_models, stage_names
from .io import write_text
from .methods import ENCODER, METHODS, folder_kind, kind_refusal, with_article
from .stages import RULE_KINDS, STAGES, grid
from .resources import is_local_model, local_model_path, model_folders, model_layers, prepared_problems, resolve_layers
from .sample import overlap_problems


def start_problems(config: dict, root: str | Path = ".") -> list[str]:
    """For a checked config run in the working directory `root`: a prepared model or fetched dataset whose
    identity the config now changes (the fetch would replace it), layers a model does not have, a stage or method
    a model's kind cannot run, a data file a sample job would refuse, training rows that share a text with a test
    or out-of-domain sample."""
    models = Path(root) / layout.PREPARED_MODELS
    return (prepared_problems(config, root) + layer_problems(config, models) + model_kind_problems(config, models)
            + data_problems(config, root))


def data_problems(config: dict, root: str | Path = ".") -> list[str]:
    """Every task's source files at hand (local files; hub datasets once fetched), read as the sample jobs read
    them: a file they would refuse (no rows, a column named twice, a row split by a stray line break, a label the
    task does not declare, ...) by its config key, then sample.overlap_problems of the files that read. Reading a
    large dataset takes seconds, so the answer is kept in .snakemake/lmadapt/ by the files' size and modification
    time and the task's settings: a plan of an unchanged grid reads no data."""
    problems = []
    for task_name, task in sorted(config["tasks"].items()):
        paths = {}
        for key, source in task_sources(task).items():
            try:
                path = Path(root) / layout.DATASET.format(task=task_name, role=source_file_role(key)) \
                    if source.get("hub") else resolve_path(source)
            except DataError as e:  # a package not installed
                problems.append(f"tasks.{task_name}.{key}: {e}")
                continue
            if path.exists():
                paths[key] = path
        stats = {key: [str(path), path.stat().st_size, path.stat().st_mtime_ns] for key, path in paths.items()}
        cache = Path(root) / ".snakemake/lmadapt" / f"sources-{fingerprint([task, config['test_seed'], stats])}.json"
        if not cache.is_file():
            write_text(json.dumps(_read_problems(task_name, task, paths, config["test_seed"])), cache)
        problems += json.loads(cache.read_text())
    return problems


def _read_problems(task_name: str, task: dict, paths: dict[str, Path], test_seed: int) -> list[str]:
    """A task's source files (config key -> path) read: what the sample jobs would refuse."""
    problems, read = [], {}
    for key, path in paths.items():
        try:
            read[key.removeprefix("data.").replace("ood.", "ood:", 1)] = read_split(
                task_sources(task)[key], path, task["fields"], task["labels"])
        except DataError as e:
            problems.append(f"tasks.{task_name}.{key}: {e}")
    return problems + overlap_problems(task_name, task, read, test_seed)


def check_config(config: dict, origin: str = "config") -> dict:
    """Return a copy of `config` with defaults filled in, or raise ConfigError naming every bad key."""
    config = copy.deepcopy(dict(config))
    _inherit_from_bases(config, origin)
    check_schema(config, origin)
    _check_cross_references(config, origin)
    return config


def _inherit_from_bases(config: dict, origin: str) -> None:
    """A derived model takes its base's resources, dtype and stage settings (before defaults are filled in, so
    that the base's, not the schema's, fill what it leaves out); its own stage settings merge over its base's."""
    models = config.get("models")
    if not isinstance(models, dict):
        return  # the schema names what is wrong

    def resolve(name: str, chain: tuple[str, ...]) -> dict:
        spec = models[name]
        base = spec.get("base") if isinstance(spec, dict) else None
        if base not in models:
            return spec if isinstance(spec, dict) else {}
        if base in chain + (name,):
            cycle = " -> ".join(chain + (name, base))
            raise ConfigError(f"{origin}: invalid configuration:\n  models.{name}.base: {cycle} derive from each other")
        base_spec = resolve(base, chain + (name,))
        for key in INHERITED:
            if key in base_spec and isinstance(base_spec[key], dict) and isinstance(spec.get(key), dict):
                spec[key] = merge_settings(base_spec[key], spec[key])
            elif key in base_spec and key not in spec:
                spec[key] = copy.deepcopy(base_spec[key])
        return spec

    for name in models:
        resolve(name, ())


def _derived_problems(config: dict) -> list[str]:
    """Fetched xor derived; a derived model's base, its data and its reward model declared."""
    problems = []
    for name, spec in config["models"].items():
        where = f"models.{name}"
        if "id" in spec and ("base" in spec or "derive" in spec):
            problems.append(f"{where}: give `id` (a model to fetch) or `base` and `derive` (a derived model), not both")
            continue
        if "id" not in spec and not ("base" in spec and "derive" in spec):
            problems.append(f"{where}: needs `id` (a model to fetch), or `base` and `derive` (a derived model)")
            continue
        if "id" in spec:
            continue
        if spec["base"] not in config["models"]:
            problems.append(f"{where}.base: {spec['base']!r} is not declared under models "
                            f"(declared: {sorted(config['models'])})")
        if spec["derive"] == "classifier":
            if "classifier" not in spec:
                problems.append(f"{where}.classifier: missing; derive: classifier needs the task its head learns")
            elif spec["classifier"]["task"] not in config["tasks"]:
                problems.append(f"{where}.classifier.task: {spec['classifier']['task']!r} is not declared under "
                                f"tasks (declared: {sorted(config['tasks'])})")
        elif spec["derive"] == "instruct":
            instruct = stage_config(config, "instruct", name)
            if not instruct["data"] and not instruct["tasks"]:
                problems.append(f"{setting_key(config, 'instruct', name, 'data')}: model {name} is instruction-tuned "
                                f"on nothing; name corpora (instruct.data) or tasks (instruct.tasks)")
            for corpus in instruct["data"]:
                if corpus not in config["corpora"]:
                    problems.append(f"{setting_key(config, 'instruct', name, 'data')}: {corpus!r} is not declared "
                                    f"under corpora (declared: {sorted(config['corpora'])})")
            for task in instruct["tasks"]:
                if task not in config["tasks"]:
                    problems.append(f"{setting_key(config, 'instruct', name, 'tasks')}: {task!r} is not declared "
                                    f"under tasks (declared: {sorted(config['tasks'])})")
                elif "instructions" not in config["tasks"][task]:
                    key = setting_key(config, "instruct", name, "tasks")
                    problems.append(f"tasks.{task}.instructions: missing; {key} builds an instruction set from "
                                    f"task {task}")
        else:
            ppo = stage_config(config, "ppo", name)
            corpus, reward = ppo["prompts"].get("corpus"), ppo["reward"]
            if corpus not in config["corpora"]:
                problems.append(f"{setting_key(config, 'ppo', name, 'prompts', 'corpus')}: "
                                f"{'missing' if corpus is None else repr(corpus) + ' is not declared under corpora'}"
                                f" (declared corpora: {sorted(config['corpora'])})")
            if reward.get("model") not in config["models"]:
                what = "missing" if reward.get("model") is None else f"{reward['model']!r} is not declared under models"
                problems.append(f"{setting_key(config, 'ppo', name, 'reward', 'model')}: {what} (the sequence "
                                f"classifier that scores {name}'s generations)")
            if ("label" in reward) == ("avoid" in reward):
                problems.append(f"{setting_key(config, 'ppo', name, 'reward')}: give `label` (its probability is the "
                                f"reward) or `avoid` (1 - its probability), one of the two")
    return problems


def _check_cross_references(config: dict, origin: str) -> None:
    """What the schema cannot say: label maps must land on declared label names."""
    problems = []
    for task_name, task in config["tasks"].items():
        for where, source in task_sources(task).items():
            for raw, name in source["label_map"].items():
                if name not in task["labels"]:
                    problems.append(f"tasks.{task_name}.{where}.label_map.{raw}: {name!r} is not one of the "
                                    f"task's labels {task['labels']}")
    selections = [(f"{stage}.{kind}", kind, config.get(stage, {}).get(kind, []))
                  for stage in dict.fromkeys(s.section for s in STAGES.values()) for kind in ("models", "tasks")]
    selections += [(f"models.{model}.{stage}.tasks", "tasks", spec.get(stage, {}).get("tasks", []))
                   for model, spec in config["models"].items() for stage in MODEL_STAGES]
    selections.append(("bow.full_train.tasks", "tasks", config["bow"].get("full_train", {}).get("tasks", [])))
    for key, kind, names in selections:
        for name in names:
            if name not in config[kind]:
                problems.append(f"{key}: {name!r} is not declared under {kind} (declared: {sorted(config[kind])})")
    problems += _derived_problems(config) + _field_problems(config) + _pattern_problems(config)
    if problems:  # the checks below look the selected names up
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(problems))
    problems += _demonstration_problems(config) + _model_source_problems(config) + _batch_problems(config)
    extracted = {task for model in stage_models(config, "extract")
                 for task in stage_names(config, "extract", "tasks", model)}
    for task_name in sorted(extracted):
        if not config["tasks"][task_name]["prompt"]["patterns"]:
            problems.append(f"tasks.{task_name}.prompt.patterns: the extract stage needs at least one pattern")
    for model in stage_models(config, "icl"):
        wanted = stage_config(config, "icl", model)["patterns"]
        for task_name in stage_names(config, "icl", "tasks", model):
            patterns = config["tasks"][task_name]["prompt"]["patterns"]
            missing = [p for p in wanted if p not in patterns]
            if not patterns or missing:
                problems.append(f"{setting_key(config, 'icl', model, 'patterns')}: task {task_name} has no pattern "
                                f"{missing or 'at all'} (tasks.{task_name}.prompt.patterns has {sorted(patterns)})")
    problems = list(dict.fromkeys(problems))  # models sharing the section's settings share its problems
    if problems:
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(problems))


# The columns every sample has beside the task's fields: a field of the same name would be the label (its id or
# name: every prompt would carry the answer) or the row's id.
SAMPLE_COLUMNS = {"label": "the gold label", "label_name": "the gold label's name", "id": "the row's id"}


def _field_problems(config: dict) -> list[str]:
    """A task's fields are the inputs its prompts show: never the label column (nor label_name or id), and in no
    source the same column as the label."""
    problems = []
    for task_name, task in config["tasks"].items():
        for field in task["fields"]:
            if field in SAMPLE_COLUMNS:
                problems.append(f"tasks.{task_name}.fields: {field!r} is {SAMPLE_COLUMNS[field]}, not an input; a "
                                f"prompt showing it would carry the answer (fields are the texts a model reads)")
        for key, source in task_sources(task).items():
            text_columns, label_column, _, _ = source_columns(source, task["fields"])
            for field, column in text_columns.items():
                if column == label_column and field not in SAMPLE_COLUMNS:
                    problems.append(f"tasks.{task_name}.{key}.columns.{field}: {column!r} is also the label's "
                                    f"column; a prompt showing it would carry the answer")
    return problems


def _pattern_problems(config: dict) -> list[str]:
    """Prompts that cannot tell the classes apart, or that a job would refuse only after loading weights: a
    template with none of the task's fields (every prompt the same) or with a field the task does not have, a label
    without a verbalizer, two labels with the same one."""
    problems = []
    for task_name, task in config["tasks"].items():
        for name, pattern in task["prompt"]["patterns"].items():
            key = f"tasks.{task_name}.prompt.patterns.{name}"
            try:
                used = [field for _, field, _, _ in string.Formatter().parse(pattern["template"]) if field is not None]
            except ValueError as e:  # an unmatched brace
                problems.append(f"{key}.template: {e}")
                continue
            unknown = sorted(set(used) - set(task["fields"]))
            if unknown:
                problems.append(f"{key}.template: uses {unknown}, not among the task's fields {task['fields']}")
            elif not used:
                problems.append(f"{key}.template: uses none of the task's fields {task['fields']} (e.g. "
                                f"{{{task['fields'][0]}}}): every example's prompt would be the same")
            verbalizer = pattern["verbalizer"]
            problems += [f"{key}.verbalizer.{label}: {word!r} is only whitespace; every label needs a word a reader "
                         f"can see" for label, word in verbalizer.items() if not word.strip()]
            missing = [label for label in task["labels"] if label not in verbalizer]
            extra = sorted(set(verbalizer) - set(task["labels"]))
            if missing or extra:
                problems.append(f"{key}.verbalizer: " + "; ".join(
                    ([f"no word for label(s) {missing}"] if missing else []) +
                    ([f"{extra} are not labels of the task ({task['labels']})"] if extra else [])))
            shared = {}
            for label in task["labels"]:
                shared.setdefault(verbalizer.get(label), []).append(label)
            for word, labels in shared.items():
                if word is not None and len(labels) > 1:
                    problems.append(f"{key}.verbalizer: labels {labels} share the word {word!r}: no scorer can "
                                    f"tell them apart")
    return problems


def _demonstration_problems(config: dict) -> list[str]:
    """Balanced demonstrations take ceil(shots / classes) rows of some class from the task's pool."""
    problems = []
    for key, task_name, shots in demonstration_needs(config):
        task = config["tasks"][task_name]
        per_class = math.ceil(shots / len(task["labels"]))
        if per_class > task["demonstrations"]:
            problems.append(f"{key}: {shots} demonstrations for task {task_name} need {per_class} per class, more "
                            f"than tasks.{task_name}.demonstrations ({task['demonstrations']}); raise it or lower "
                            f"the shots")
    return problems


def _model_source_problems(config: dict) -> list[str]:
    """A local model that is not where the config says is an error now, not in the fetch job."""
    problems = []
    for name, spec in config["models"].items():
        if spec.get("derive") or not is_local_model(spec):
            continue
        try:
            folder = local_model_path(spec)
        except ConfigError as e:
            problems.append(f"models.{name}.package: {e}")
            continue
        if not folder.is_dir():
            problems.append(f"models.{name}.id: local folder {folder} not found")
        elif spec.get("gguf_file") and not (folder / spec["gguf_file"]).is_file():
            problems.append(f"models.{name}.gguf_file: {folder / spec['gguf_file']} not found")
        elif not spec.get("gguf_file") and not (folder / "config.json").is_file():
            problems.append(f"models.{name}.id: {folder} has no config.json (not a model folder)")
    return problems


def _batch_problems(config: dict) -> list[str]:
    """The effective batch is the same for every model, so it must split evenly over each model's processes."""
    problems = []
    for name in stage_models(config, "finetune"):
        settings = stage_config(config, "finetune", name)
        nodes, per_node = training_layout(config["models"][name])
        per_step = settings["batch_size"] * nodes * per_node
        if settings["methods"] and settings["effective_batch"] % per_step:
            own = config["models"][name].get("finetune", {})
            key = next((f"models.{name}.finetune.{key}" for key in ("effective_batch", "batch_size") if key in own),
                       "finetune.effective_batch")
            problems.append(f"{key}: effective batch {settings['effective_batch']} is not a multiple of batch_size x "
                            f"gpus{' x nodes' if nodes > 1 else ''} = {per_step} for model {name}")
    return problems


def layer_problems(config: dict, models_dir: str | Path = layout.PREPARED_MODELS) -> list[str]:
    """extract.layers checked against each extracted model whose config.json can be read now."""
    problems = []
    for name in stage_models(config, "extract"):
        folders = model_folders(config, name, models_dir)
        n_layers = next((n for n in map(model_layers, folders) if n is not None), None)
        if n_layers is not None:
            try:
                resolve_layers(stage_config(config, "extract", name)["layers"], n_layers, f"model {name}")
            except ConfigError as e:
                problems.append(str(e).replace("extract.layers", setting_key(config, "extract", name, "layers"), 1))
    return problems


def stage_key(section: str, model: str) -> str:
    """The config key that sends a model to a stage (finetune: the key listing its methods)."""
    return "finetune.methods" if section == "finetune" else f"{section}.models"


def kind_problems(cells: dict[str, list[dict]], kinds: dict[str, str], key_of=stage_key) -> list[str]:
    """Cells a model cannot run, one line per (stage or method, model), naming the config key that asks for it.
    cells: the grid by stage; kinds: model name -> kind, for the models whose config.json is at hand;
    key_of(section, model): the config key that asks for a model's cells of a stage."""
    problems = {}
    for name, stage_cells in cells.items():
        stage = STAGES.get(name)
        section, runs_on = (stage.section, stage.kinds) if stage else (name, RULE_KINDS.get(name))
        for cell in stage_cells:
            kind = kinds.get(cell.get("model"))
            if "method" in cell:
                runs_on, what = METHODS[cell["method"]].kinds, f"method {cell['method']}"
            else:
                what = section
            if kind is None or runs_on is None or kind in runs_on:
                continue
            key = key_of(section, cell["model"])
            problems[key, what, cell["model"]] = f"{key}: {kind_refusal(what, runs_on, cell['model'], kind)}"
    return list(problems.values())


def model_kind_problems(config: dict, models_dir: str | Path = layout.PREPARED_MODELS) -> list[str]:
    """Cells a model cannot run by its kind (decoder, encoder-decoder, encoder: lmadapt/methods.py), for every
    model whose config.json can be read now; each names the config key that asks for it."""
    kinds = {}
    for name in config["models"]:
        kind = next((k for k in map(folder_kind, model_folders(config, name, models_dir)) if k), None)
        if kind:
            kinds[name] = kind

    def key_of(stage, model):
        if stage in DERIVE_KINDS:
            return f"models.{model}.derive"
        if stage == "finetune":
            return setting_key(config, "finetune", model, "methods")
        return stage_key(stage, model) if config.get(stage, {}).get("models") else "models"

    cls = [f"{setting_key(config, 'extract', name, 'pooling')}: cls pooling reads an encoder's [CLS] / <s> token; "
           f"{name} is {with_article(kinds[name])} model"
           for name in stage_models(config, "extract")
           if name in kinds and kinds[name] != ENCODER and "cls" in stage_config(config, "extract", name)["pooling"]]
    return kind_problems(grid(config), kinds, key_of) + cls


def load_config(path: str | Path) -> dict:
    return check_config(read_yaml(path), origin=str(path))
