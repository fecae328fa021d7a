"""Fetched and packaged resources: where a model is prepared from and what makes a prepared model folder or a
fetched dataset what it is (its identity, which the fetch rules never replace), unpinned hub revisions, and what
a model folder's config.json tells before any weights load (its layers)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from . import layout
from .config import ConfigError, source_file_role, task_sources
from .grid import root_model

HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # name or namespace/name, as the hub accepts them


def is_local_model(spec: dict) -> bool:
    """A model from a package or a local folder (a path: absolute, starting with ./ ../ ~, an existing folder,
    or anything that cannot be a hub id such as a/b/c), else a hub id."""
    model_id = spec["id"]
    return (bool(spec.get("package")) or model_id.startswith(("/", "./", "../", "~")) or model_id == "."
            or not HUB_ID.fullmatch(model_id) or ".." in model_id or Path(model_id).is_dir())


def package_folder(package: str) -> Path | None:
    """Where an installed package lies (found without importing it), or None."""
    found = importlib.util.find_spec(package)
    return Path(list(found.submodule_search_locations)[0]) if found and found.submodule_search_locations else None


def local_model_path(spec: dict) -> Path:
    """The folder a local model is read from (inside its package when it names one)."""
    if spec.get("package"):
        folder = package_folder(spec["package"])
        if folder is None:
            raise ConfigError(f"package {spec['package']!r} is not installed (see envs/requirements-data.txt)")
        return folder / spec["id"]
    return Path(spec["id"]).expanduser()


def model_source(spec: dict) -> str:
    """Where a model is prepared from, as its folder's lmadapt_model.json records it."""
    if not is_local_model(spec):
        return f"hub:{spec['id']}"
    if spec.get("gguf_file"):
        return f"gguf:{spec.get('package') or local_model_path(spec)}/{spec['gguf_file']}"
    if spec.get("package"):
        return f"package:{spec['package']}/{spec['id']}"
    return f"local:{local_model_path(spec)}"


def package_version(package: str) -> str | None:
    """The installed distribution that ships an importable package, as name==version (a wheel's pin), or None."""
    from importlib.metadata import packages_distributions, version

    dists = packages_distributions().get(package)
    return f"{dists[0]}=={version(dists[0])}" if dists else None


def model_identity(spec: dict) -> dict:
    """What makes a prepared model folder what it is; resources (gpus, mem_mb) and dtype do not."""
    return {key: spec.get(key) for key in ("id", "revision", "package", "gguf_file")}


def dataset_identity(source: dict) -> dict:
    """What makes a fetched hub dataset what it is; how its rows are read later (columns, label_map) does not."""
    return {key: source.get(key) for key in ("hub", "hub_config", "split", "revision", "data_files")}


MODEL_INFO = "lmadapt_model.json"  # written into every prepared model folder by fetch_model


FETCH_KEY = "lmadapt_fetch"  # the Parquet metadata of a fetched dataset


def _describe_identity(identity: dict) -> str:
    return ", ".join(f"{key} {value!r}" for key, value in identity.items() if value is not None)


def prepared_problems(config: dict, root: str | Path = ".") -> list[str]:
    """Prepared models and fetched datasets whose config entry now says something else. The fetch rules never
    replace them (a typo in an id would otherwise delete a 13 GB download before failing): the user removes the
    old one, or names the new model differently."""
    root = Path(root)
    problems = []
    for name, spec in config["models"].items():
        info_path = root / layout.PREPARED_MODEL.format(model=name) / MODEL_INFO
        if spec.get("derive") or not info_path.is_file():
            continue
        info = json.loads(info_path.read_text())
        recorded = info.get("identity") or {"source": info.get("source")}  # folders prepared before identities
        now = model_identity(spec) if "identity" in info else {"source": model_source(spec)}
        if recorded != now:
            problems.append(f"models.{name}: {info_path.parent} was prepared from "
                            f"{_describe_identity(recorded)}; the config now says "
                            f"{_describe_identity(now)}. To prepare that, remove "
                            f"{info_path.parent} (or give the model a new name)")
    for task_name, task in config["tasks"].items():
        for key, source in task_sources(task).items():
            path = root / layout.DATASET.format(task=task_name, role=source_file_role(key))
            if not source.get("hub") or not path.is_file():
                continue
            recorded = _fetched_identity(path)
            if recorded is not None and recorded != dataset_identity(source):
                problems.append(f"tasks.{task_name}.{key}: {path} was fetched from {_describe_identity(recorded)}; "
                                f"the config now says {_describe_identity(dataset_identity(source))}. To fetch "
                                f"that, remove {path}")
    return problems


COMMIT = re.compile(r"[0-9a-f]{40}")


def unpinned_sources(config: dict, resources: str | Path = "resources") -> list[dict]:
    """Hub models, datasets and corpora whose `revision` is not a commit, with the commit their fetch got where it
    is at hand (in resources/models, data, corpora): the line to pin them with."""
    root = Path(resources)
    found = []
    for name, spec in config["models"].items():
        if spec.get("derive") or is_local_model(spec) or COMMIT.fullmatch(spec.get("revision") or ""):
            continue
        info = root / "models" / name / MODEL_INFO
        found.append({"key": f"models.{name}.revision", "revision": spec.get("revision"),
                      "commit": json.loads(info.read_text()).get("revision") if info.is_file() else None})
    sources = [(f"tasks.{t}.{key}", src, root / "data" / t / f"{source_file_role(key)}.parquet")
               for t, task in config["tasks"].items() for key, src in task_sources(task).items()]
    sources += [(f"corpora.{name}", src, root / "corpora" / f"{name}.parquet")
                for name, src in config.get("corpora", {}).items()]
    for key, source, path in sources:
        if not source.get("hub") or "/" not in source["hub"] or COMMIT.fullmatch(source.get("revision") or ""):
            continue  # a builder on local files (parquet, json) has no commit
        found.append({"key": f"{key}.revision", "revision": source.get("revision"),
                      "commit": _fetched_commit(path) if path.is_file() else None})
    return found


def _fetched_commit(path: Path) -> str | None:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[FETCH_KEY.encode()]).get("commit") if FETCH_KEY.encode() in meta else None


def _fetched_identity(path: Path) -> dict | None:
    import pyarrow.parquet as pq  # only when a fetched dataset exists

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return None  # unreadable: the sample job names it
    return json.loads(meta[FETCH_KEY.encode()]).get("identity") if FETCH_KEY.encode() in meta else None


def model_layers(folder: str | Path) -> int | None:
    """The number of transformer layers a model folder's config.json declares (None without one)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    config = config.get("text_config") or config
    return next((config[key] for key in ("num_hidden_layers", "n_layer", "num_layers") if key in config), None)


def resolve_layers(layers, n_layers: int, model: str = "the model") -> list[int]:
    """Hidden-state indices (0 = embeddings, n = last layer) from extract.layers: a list with negative indices
    counting from the end, or 'all'."""
    if layers == "all":
        return list(range(n_layers + 1))
    out = set()
    for index in layers:
        resolved = index + n_layers + 1 if index < 0 else index
        if not 0 <= resolved <= n_layers:
            raise ConfigError(f"extract.layers: layer {index} is out of range for {model}, which has {n_layers} "
                              f"layers (0..{n_layers}, or -1..-{n_layers + 1})")
        out.add(resolved)
    return sorted(out)


def model_folders(config: dict, name: str, models_dir: str | Path) -> list[Path]:
    """Where a model's config.json can be read before any job: its prepared folder, or the local folder it will
    be prepared from (a derived model's: its root model's, whose kind, layers and tokenizer it keeps)."""
    name = root_model(config, name)
    spec = config["models"][name]
    folders = [Path(models_dir) / name]
    if is_local_model(spec) and not spec.get("gguf_file") and (not spec.get("package")
                                                               or package_folder(spec["package"])):
        folders.append(local_model_path(spec))
    return folders
