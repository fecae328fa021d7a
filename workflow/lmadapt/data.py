"""Read one split of a task into a uniform table: `id`, the task's text fields, `label`, `label_name`.

Sources are local files (csv, tsv, jsonl, parquet, or an official layout: GLUE RTE TSV, HANS, the aclImdb
folder, the AG News CSV), files shipped inside an installed package, or hub datasets that the fetch rule saved
to Parquet beforehand. Every problem is reported with the file, column, line (1-based, as an editor shows it)
or label that caused it.
"""
from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .resources import FETCH_KEY, dataset_identity, package_folder
from .errors import DataError


@dataclass(frozen=True)
class Layout:
    """How an official file layout is read: its reader, text columns in order, label and id columns."""
    reader: str
    text: tuple[str, ...]
    label: str = "label"
    id: str | None = None
    keep: tuple[str, ...] = ()


OFFICIAL_FORMATS = {
    # GLUE RTE: index, sentence1, sentence2, label (entailment / not_entailment)
    "glue_rte": Layout("tsv", ("sentence1", "sentence2"), "label", "index"),
    # HANS heuristics_evaluation_set.txt: gold_label, parses, sentence1, sentence2, pairID, heuristic, subcase, template
    "hans": Layout("tsv", ("sentence1", "sentence2"), "gold_label", "pairID", ("heuristic", "subcase", "template")),
    # aclImdb/{train,test}: pos/*.txt and neg/*.txt; labels 0 (neg) / 1 (pos) as in the hub's imdb
    "aclimdb": Layout("aclimdb", ("text",), "label", "id"),
    # AG News train.csv/test.csv: no header; class index 1-4, title, description
    "ag_news_csv": Layout("ag_news_csv", ("text",), "label", None),
}
READERS_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass
class Split:
    """One split read into the uniform table, with where it came from."""
    rows: pd.DataFrame
    path: Path
    description: dict = field(default_factory=dict)


def resolve_path(source: dict) -> Path:
    """The local path of a file source; files inside packages are found where the package is installed."""
    if source.get("package"):
        folder = package_folder(source["package"])
        if folder is None:
            raise DataError(f"package {source['package']!r} is not installed; it ships {source['path']!r} "
                            f"(install it: see envs/requirements-data.txt)")
        return folder / source["path"]
    return Path(source["path"])


def corpus_path(source: dict, fetched: str | Path) -> Path:
    """Where a corpus is read: the Parquet file its fetch wrote (a hub corpus), else its own file."""
    return Path(fetched) if source.get("hub") else resolve_path(source)


def _source_name(source: dict, path: Path) -> str:
    if source.get("hub"):
        return f"hub:{source['hub']}" + (f"/{source['hub_config']}" if source.get("hub_config") else "") + \
            f":{source['split']}"
    if source.get("package"):
        return f"package:{source['package']}/{source['path']}"
    return str(path)


def _read_raw(path: Path, reader: str, encoding: str) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (no header, no rows)")
    try:
        if reader in ("csv", "tsv"):
            return _read_delimited(path, reader, encoding)
        if reader == "jsonl":
            if _is_json_array(path, encoding):  # one JSON array of records (a .json file), not JSON Lines
                return _read_json_array(path, encoding)
            return pd.read_json(path, lines=True, dtype=False, encoding=encoding)
        if reader == "parquet":
            return pd.read_parquet(path)
        if reader == "ag_news_csv":
            raw = pd.read_csv(path, header=None, names=["class", "title", "description"], dtype=str,
                              keep_default_na=False, encoding=encoding)
            bad = ~raw["class"].isin(["1", "2", "3", "4"])
            if bad.any():
                row = int(bad.to_numpy().nonzero()[0][0])
                raise DataError(f"{locate(path, reader, encoding, row)}, column 1 (class index): "
                                f"{raw['class'].iloc[row]!r} is not a class index 1-4")
            text = (raw["title"].str.strip() + " " + raw["description"].str.strip()).str.strip()
            return pd.DataFrame({"text": text, "label": (raw["class"].astype(int) - 1).astype(str)})
        if reader == "aclimdb":
            rows = []
            for label, folder in (("0", "neg"), ("1", "pos")):
                if not (path / folder).is_dir():
                    raise DataError(f"{path}: no '{folder}' folder; an aclImdb split has pos/ and neg/")
                for f in sorted((path / folder).glob("*.txt")):
                    rows.append({"id": f"{folder}/{f.stem}", "text": f.read_text(encoding=encoding), "label": label})
            return pd.DataFrame(rows, columns=["id", "text", "label"])
    except DataError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserWarning) as e:
        raise _read_error(path, reader, encoding, e) from None
    raise DataError(f"{path}: unknown reader {reader!r}")


def _csv_rows(f, reader: str):
    return csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if reader == "tsv" else csv.reader(f)


def _read_delimited(path: Path, reader: str, encoding: str) -> pd.DataFrame:
    """A CSV or TSV file (compressed or not) with a header, every value as text; a header that names a column
    twice, or a row of a text file with fewer fields than the header (pandas would fill them with empty texts), is
    a DataError naming it."""
    opts = dict(sep="\t", quoting=csv.QUOTE_NONE) if reader == "tsv" else {}
    header = list(pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, encoding=encoding,
                              **opts).iloc[0])
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        places = "; ".join(f"{name!r} is column {' and '.join(str(i + 1) for i, n in enumerate(header) if n == name)}"
                           for name in twice)
        raise DataError(f"{path}: the header names a column twice ({places}); rename one, or the first would be "
                        f"read and the other silently ignored")
    with warnings.catch_warnings():  # a first row with one field more than the header: an error, not an
        warnings.simplefilter("error", pd.errors.ParserWarning)  # index column (pandas' default)
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding, index_col=False, **opts)
    if path.suffix in PLAIN_TEXT and (raw == "").to_numpy().any():  # a short row reads as empty trailing fields
        short = _field_count_error(path, reader, encoding)
        if short is not None:
            raise short
    return raw


def _field_count_error(path: Path, reader: str, encoding: str) -> DataError | None:
    """The first row whose number of fields is not the header's, as the csv module reads the file."""
    with open(path, newline="", encoding=encoding) as f:
        rows = _csv_rows(f, reader)
        header = next(rows, [])
        for row in rows:
            if row and len(row) != len(header):
                hint = ("a stray line break split the row: a bare carriage return, or a newline inside an unquoted "
                        "text?" if len(row) < len(header) else
                        "a tab inside a text?" if reader == "tsv" else "a comma inside an unquoted text?")
                return DataError(f"line {rows.line_num} of {path}: {len(row)} field{'s' * (len(row) != 1)}, the "
                                 f"header has {len(header)} ({hint})")
    return None


def _is_json_array(path: Path, encoding: str) -> bool:
    with open(path, encoding=encoding) as f:
        return f.read(4096).lstrip().startswith("[")


def _read_json_array(path: Path, encoding: str) -> pd.DataFrame:
    """A .json file holding one array of objects, one per row."""
    try:
        records = json.loads(path.read_text(encoding=encoding))
    except json.JSONDecodeError as e:
        raise DataError(f"line {e.lineno} of {path}: not valid JSON ({e.msg}, column {e.colno})") from None
    odd = next((i for i, record in enumerate(records) if not isinstance(record, dict)), None)
    if not isinstance(records, list) or odd is not None:
        raise DataError(f"{path}: a JSON array whose item {odd + 1 if odd is not None else ''} is not an object; "
                        f"give one object per row, as JSON Lines (one per line) or one array of objects")
    return pd.DataFrame.from_records(records)


PLAIN_TEXT = (".csv", ".tsv", ".jsonl", ".json", ".txt")  # a compressed file's lines are not the file's lines


def _read_error(path: Path, reader: str, encoding: str, error: Exception) -> DataError:
    """What cannot be read, and where, as far as the file tells: the first line that is not text in the
    encoding (with the setting that fixes it), or the first line of a JSON Lines file that is not JSON."""
    plain = path.is_file() and path.suffix in PLAIN_TEXT
    if isinstance(error, UnicodeDecodeError):
        where = path
        if plain:
            with open(path, "rb") as f:
                for number, line in enumerate(f, 1):
                    try:
                        line.decode(encoding)
                    except UnicodeDecodeError as bad:
                        where = f"line {number} of {path}, column {bad.start + 1} (byte {line[bad.start]:#04x})"
                        break
        return DataError(f"{where}: not {encoding} text; give the file's encoding as the source's `encoding:` "
                         f"(e.g. encoding: latin-1)")
    counted = _field_count_error(path, reader, encoding) if isinstance(error, pd.errors.ParserWarning) and plain \
        else None
    if counted is not None:
        return counted
    if reader == "jsonl" and plain:
        with open(path, encoding=encoding) as f:
            for number, line in enumerate(f, 1):
                try:
                    if line.strip():
                        json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as bad:
                    return DataError(f"line {number} of {path}: not a JSON object ({bad.msg}, column {bad.colno})")
    return DataError(f"{path}: cannot be read as {reader}: {error}")


def _record_lines(path: Path, reader: str, encoding: str) -> list[int]:
    """The 1-based line on which each data record of a text file starts (quoted CSV fields may span lines;
    blank lines hold no record, as pandas reads them)."""
    with open(path, newline="", encoding=encoding) as f:
        if reader == "jsonl":
            return [number for number, line in enumerate(f, 1) if line.strip()]
        records = _csv_rows(f, reader)
        starts, line = [], 1
        for record in records:
            if record:
                starts.append(line)
            line = records.line_num + 1
    return starts if reader == "ag_news_csv" else starts[1:]  # the others have a header line


def locate(path: Path, reader: str, encoding: str, position: int, record_id: str | None = None) -> str:
    """Where the record at `position` (0-based, among the file's records) is: a line of a text file, a row of a
    Parquet file, a file of an aclImdb folder."""
    if reader == "aclimdb" and record_id is not None:
        return str(path / f"{record_id}.txt")
    if reader == "jsonl" and _is_json_array(path, encoding):
        return f"record {position + 1} of {path}"
    if reader in ("csv", "tsv", "jsonl", "ag_news_csv"):
        lines = _record_lines(path, reader, encoding)
        if position < len(lines):
            return f"line {lines[position]} of {path}"
    return f"row {position + 1} of {path}"


def reader_of(source: dict, path: Path) -> str:
    """How a source file is read: its layout's reader, its `format`, or its name's suffix."""
    fmt = source.get("format", "auto")
    if source.get("hub"):
        return "parquet"  # the fetch rule stores hub datasets as Parquet
    if fmt in OFFICIAL_FORMATS:
        return OFFICIAL_FORMATS[fmt].reader
    if fmt != "auto":
        return fmt
    suffixes = [s for s in path.suffixes if s in READERS_BY_SUFFIX]
    if not suffixes:
        raise DataError(f"{path}: cannot tell the format from the name; set `format` "
                        f"({', '.join(READERS_BY_SUFFIX.values())}, or an official layout)")
    return READERS_BY_SUFFIX[suffixes[-1]]


def source_columns(source: dict, fields: list[str]):
    """The source columns of the task's fields, the label, the id (or None) and the kept columns: the official
    format's, where it has one, under the source's own `columns`."""
    official = OFFICIAL_FORMATS.get(source.get("format", "auto"))
    columns = dict(source.get("columns") or {})
    text_columns = {f: columns.get(f, official.text[i] if official and i < len(official.text) else f)
                    for i, f in enumerate(fields)}
    label_column = columns.get("label", official.label if official else "label")
    id_column = columns.get("id", official.id if official else None)
    keep = list(source.get("keep_columns") or (official.keep if official else ()))
    return text_columns, label_column, id_column, keep


def _columns(source: dict, path: Path, fields: list[str], present: list[str]):
    """source_columns, each one checked to be in the file."""
    fmt = source.get("format", "auto")
    official = OFFICIAL_FORMATS.get(fmt)
    if official and len(official.text) != len(fields) and not all(f in (source.get("columns") or {}) for f in fields):
        raise DataError(f"{path}: layout {fmt} has {len(official.text)} text column(s) {list(official.text)} "
                        f"but the task has fields {fields}; map them with `columns`")
    text_columns, label_column, id_column, keep = source_columns(source, fields)
    needed = list(text_columns.values()) + [label_column] + ([id_column] if id_column else []) + keep
    missing = [c for c in needed if c not in present]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {present}")
    return text_columns, label_column, id_column, keep


def read_split(source: dict, path: str | Path, fields: list[str], labels: list[str]) -> Split:
    """Read the file at `path` (already fetched or resolved) as described by `source` into the uniform table."""
    path = Path(path)
    reader = reader_of(source, path)
    encoding = source.get("encoding", "utf-8")
    raw = _read_raw(path, reader, encoding)
    if raw.empty:
        raise DataError(f"{path}: no data rows" + (" (only a header line)" if len(raw.columns) else ""))
    text_columns, label_column, id_column, keep = _columns(source, path, fields, list(raw.columns))

    raw_labels = raw[label_column].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else
                                       str(int(v)) if isinstance(v, (int, float)) and float(v).is_integer() else str(v))
    keep_rows = ~raw_labels.isin(set(source.get("exclude_labels") or []))
    raw, raw_labels = raw[keep_rows], raw_labels[keep_rows]
    row_numbers = keep_rows.to_numpy().nonzero()[0]  # positions among the file's records, for messages
    ids = raw[id_column].astype(str).to_numpy() if id_column else row_numbers.astype(str)

    def where(i: int) -> str:  # the i-th remaining row's place in the file, for messages
        place = locate(path, reader, encoding, row_numbers[i], ids[i])
        return f"{place} (id {ids[i]})" if id_column else place

    for field_name, column in text_columns.items():
        text = raw[column]
        empty = text.isna().to_numpy() | (text.astype(str).str.strip() == "").to_numpy()
        if empty.any() and source.get("drop_empty_text"):
            raw, raw_labels, row_numbers, ids = raw[~empty], raw_labels[~empty], row_numbers[~empty], ids[~empty]
        elif empty.any():
            i = int(empty.nonzero()[0][0])
            raise DataError(f"{where(i)}: column "
                            f"{column!r} (field {field_name}) is empty or NaN; {int(empty.sum())} such row(s) "
                            f"(drop them with `drop_empty_text`)")
    if raw.empty:
        raise DataError(f"{path}: no rows left after `exclude_labels` / `drop_empty_text`")

    label_ids = _label_ids(raw_labels.to_numpy(), source.get("label_map") or {}, labels, label_column,
                           where)
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise DataError(f"{path}: id column {id_column!r} is not unique (e.g. {dup!r})")

    rows = pd.DataFrame({"id": ids})
    for field_name, column in text_columns.items():
        rows[field_name] = raw[column].astype(str).to_numpy()
    rows["label"] = label_ids
    rows["label_name"] = [labels[i] for i in label_ids]
    for column in keep:
        rows[column] = raw[column].astype(str).to_numpy()
    return Split(rows.reset_index(drop=True), path, {"source": _source_name(source, path)})


def read_corpus(source: dict, path: str | Path, columns: list[str]) -> pd.DataFrame:
    """A corpus (texts without labels: an instruction set, prompts): the named columns, mapped through the
    source's `columns`, as text (a missing value is an empty text), in file order."""
    path = Path(path)
    raw = _read_raw(path, reader_of(source, path), source.get("encoding", "utf-8"))
    mapping = {column: (source.get("columns") or {}).get(column, column) for column in columns}
    missing = [f"{column} (column {name!r})" for column, name in mapping.items() if name not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)}; the file has {list(raw.columns)} (map them with the "
                        f"corpus's `columns`)")
    if raw.empty:
        raise DataError(f"{path}: no data rows")
    return pd.DataFrame({column: raw[name].fillna("").astype(str).to_numpy() for column, name in mapping.items()})


def _label_ids(raw, label_map, labels, column, where) -> list[int]:
    """Map source label values to label ids: through label_map, by name, or as an integer index. where(i): the
    i-th value's place in the file, for messages."""
    lookup = {name: i for i, name in enumerate(labels)}
    out = []
    for i, value in enumerate(raw):
        name = label_map.get(value, value)
        if name in lookup:
            out.append(lookup[name])
        elif name.lstrip("-").isdigit() and 0 <= int(name) < len(labels):
            out.append(int(name))
        else:
            raise DataError(f"{where(i)}: column {column!r}: label {value!r} is "
                            f"not one of the declared labels {labels} (nor an index 0-{len(labels) - 1}); "
                            f"map it with `label_map` or drop it with `exclude_labels`")
    return out


def fetch_hub(source: dict, out: str | Path) -> int:
    """Download a hub dataset split once (login node) and store it as Parquet for the compute jobs, with the hub
    commit it came from in the file's metadata (a branch such as refs/convert/parquet resolved to its commit)."""
    import json

    import datasets  # slow to import; only the fetch step needs it
    import pyarrow.parquet as pq

    from .io import atomic_path

    try:
        ds = datasets.load_dataset(source["hub"], source.get("hub_config"), split=source["split"],
                                   data_files=source.get("data_files"), revision=source.get("revision"))
    except Exception as e:  # datasets raises many types; the message is what the user needs
        raise DataError(f"{_source_name(source, Path(out))}: cannot load: {type(e).__name__}: {e}") from None
    origin = {"source": _source_name(source, Path(out)), "revision": source.get("revision"),
              "commit": hub_commit(source), "identity": dataset_identity(source)}
    with atomic_path(out) as tmp:
        ds.to_parquet(str(tmp))
        table = pq.read_table(tmp)
        metadata = dict(table.schema.metadata or {}, **{FETCH_KEY: json.dumps(origin)})
        pq.write_table(table.replace_schema_metadata(metadata), tmp)
    return len(ds)


def hub_commit(source: dict) -> str | None:
    """The commit a hub dataset's revision resolves to, or None for a builder on local files (json, parquet)."""
    if "/" not in source["hub"]:
        return None
    from huggingface_hub import HfApi

    return HfApi().dataset_info(source["hub"], revision=source.get("revision")).sha
