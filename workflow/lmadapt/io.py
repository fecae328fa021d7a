"""Atomic writes (a file appears complete under its final name or not at all) and checked reads of the Parquet
files the stages hand each other."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UnreadableFile
from .layout import producing_rule


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path (file or folder) beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp*"):  # left by a killed writer of this path
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


def write_parquet(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """The lines of a Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def activation_column(pooling: str, layer: int) -> str:
    """The column of an activations file that holds one pooling of one layer (extract writes it, probe reads it)."""
    return f"{pooling}_{layer}"


PARQUET_MAGIC = b"PAR1"


def _unreadable(path: Path, reason: str) -> UnreadableFile:
    """A broken intermediate of the workflow is moved aside (kept as PATH.corrupt, for a look) so the next run
    remakes it; any other file is only named."""
    rule = producing_rule(path)
    if rule is None:
        return UnreadableFile(f"{path}: unreadable ({reason})")
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
        done = f"moved to {aside.name}; the next run remakes it (rule {rule})"
    except OSError:  # another job got there first, or a read-only folder
        done = f"delete it and rerun (rule {rule} remakes it)"
    return UnreadableFile(f"{path}: unreadable ({reason}); {done}")


def _missing(path: Path) -> UnreadableFile:
    rule = producing_rule(path)
    return UnreadableFile(f"{path}: not found" + (f" (rule {rule} makes it)" if rule else ""))


def read_metadata(path: str | Path, key: str) -> dict:
    """The JSON document an lmadapt stage stored under `key` in a Parquet file's metadata. A file that is
    truncated, corrupted or lacks the document gives a one-line error naming it (and is moved aside)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(max(os.fstat(f.fileno()).st_size - 4, 0))
            tail = f.read(4)
    except FileNotFoundError:
        raise _missing(path) from None
    if head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        raise _unreadable(path, "not a complete Parquet file: truncated or overwritten")
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, f"corrupted Parquet: {str(e).splitlines()[0]}") from None
    if key.encode() not in meta:
        raise _unreadable(path, f"no '{key}' metadata: not written by lmadapt")
    return json.loads(meta[key.encode()])


def read_table(path: str | Path, key: str) -> tuple[pd.DataFrame, dict]:
    """An lmadapt Parquet file's rows and its `key` metadata, checked as read_metadata checks them."""
    meta = read_metadata(path, key)
    try:
        return pq.read_table(path).to_pandas(), meta
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(Path(path), f"corrupted Parquet: {str(e).splitlines()[0]}") from None


def read_json(path: str | Path) -> dict:
    """A JSON file an lmadapt stage wrote (a metrics file), checked as read_metadata checks Parquet."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise _missing(path) from None
    except (ValueError, OSError) as e:
        raise _unreadable(path, f"not valid JSON: {e}") from None


def file_sha256(path: str | Path) -> str:
    """Content hash of a file, or of a folder's file names and sizes (aclImdb has 50,000 small files)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(path)}:{f.stat().st_size}\n".encode())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
