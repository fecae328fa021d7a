"""The `aggregate` stage: every metrics file -> one tidy table -> the paper's tables and figures.

One row per cell x evaluation split (and per group, e.g. HANS heuristic), with cost and provenance columns.
Tables show mean ± std over seeds with the number of seeds, the best value of each column in bold, the
majority-class baseline as its own row, skipped cells with their reason, degenerate cells marked, and cells
some of whose evaluation examples were left out for their length marked.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .figures import write_figures
from .io import UnreadableFile, atomic_path, read_json, write_text

ROW_KEYS = ["task", "model", "method", "pooling", "layer", "prompt", "k", "examples", "seed", "split", "group"]
DEGENERATE_MARK = "†"
LEFT_OUT_MARK = "‡"  # some evaluation examples did not fit the context and were left out (icl.fit: skip_examples)
# Column names with their unit: ICL, probes and fine-tuning compare in labeled examples used in total.
KEY_LABELS = {"k": "k (per class)", "examples": "labeled examples"}


def load_records(paths: list[str]) -> pd.DataFrame:
    """The tidy table: one row per record x split, plus one per group (HANS heuristic) with `group` set."""
    rows = []
    for path in paths:
        document = read_json(path)
        if not isinstance(document, dict) or "records" not in document:
            raise UnreadableFile(f"{path}: not a metrics file (no 'records')")
        records = document["records"]
        for r in records:
            base = {key: r.get(key) for key in ROW_KEYS if key != "group"}
            prov, cost = r.get("provenance", {}), r.get("cost", {})
            base.update(group=None, n=r["n"], accuracy=r["accuracy"], macro_f1=r["macro_f1"],
                        majority_baseline=r.get("majority_baseline"), degenerate=r["degenerate"],
                        skipped=(r["skipped"] or {}).get("reason"), skipped_examples=r.get("skipped_examples") or 0,
                        skipped_detail=json.dumps(r["skipped"]) if r["skipped"] else None,
                        predicted_distribution=json.dumps(r.get("predicted_distribution")),
                        wall_seconds=cost.get("wall_seconds"), device=cost.get("device"),
                        peak_rss_mb=cost.get("peak_rss_mb"), config_hash=prov.get("config_hash"),
                        code_version=prov.get("code_version"), model_revision=prov.get("model_revision"),
                        data_fingerprint=prov.get("data_fingerprint"), source=str(path))
            rows.append(base)
            for column, groups in (r.get("by_group") or {}).items():
                for name, scores in groups.items():
                    rows.append(dict(base, group=f"{column}={name}", n=scores["n"], accuracy=scores["accuracy"],
                                     macro_f1=None, majority_baseline=None, degenerate=False))
    frame = pd.DataFrame(rows, columns=ROW_KEYS + ["n", "accuracy", "macro_f1", "majority_baseline", "degenerate",
                                                   "skipped", "skipped_examples", "skipped_detail",
                                                   "predicted_distribution", "wall_seconds", "device", "peak_rss_mb",
                                                   "config_hash",
                                                   "code_version", "model_revision", "data_fingerprint", "source"])
    for column in ("layer", "k", "examples", "seed"):
        frame[column] = frame[column].astype("Int64")
    return frame.sort_values([c for c in ROW_KEYS], na_position="first", kind="stable").reset_index(drop=True)


def _label(value) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA else str(value)


def _filled(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Missing text keys (no group, no pooling) as '–', so that they group and pivot like any value."""
    return frame.fillna({k: "–" for k in keys if not pd.api.types.is_numeric_dtype(frame[k])})


def summarize(frame: pd.DataFrame, rows: list[str], columns: list[str], metric: str) -> pd.DataFrame:
    """mean, std and seed count per (rows, columns) cell; skipped and degenerate runs are counted apart."""
    keys = rows + columns
    grouped = _filled(frame, keys).groupby(keys, dropna=False)
    out = grouped.agg(mean=(metric, "mean"), std=(metric, "std"), seeds=(metric, "count"),
                      degenerate=("degenerate", "sum"), skipped=("skipped", lambda s: next(iter(s.dropna()), None)),
                      left_out=("skipped_examples", "sum"))
    return out.reset_index()


def cell_text(mean, std, seeds, degenerate, skipped, left_out) -> str:
    if seeds == 0:
        return f"skipped: {skipped}" if skipped else "–"
    std_text = f" ± {std * 100:.1f}" if seeds > 1 and not np.isnan(std) else ""
    marks = (DEGENERATE_MARK if degenerate else "") + (LEFT_OUT_MARK if left_out else "")
    return f"{mean * 100:.1f}{std_text} ({seeds}){marks}"


def build_table(frame: pd.DataFrame, table: dict, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(text table, numeric means) for one paper table: table has methods, rows, columns, splits."""
    part = frame[frame["method"].isin(table["methods"]) & frame["split"].isin(table["splits"] or frame["split"])]
    if not table["groups"]:
        part = part[part["group"].isna()]
    if part.empty:
        return pd.DataFrame(), pd.DataFrame()
    summary = summarize(part, table["rows"], table["columns"], metric)
    summary["text"] = [cell_text(*v) for v in summary[["mean", "std", "seeds", "degenerate", "skipped",
                                                       "left_out"]].to_numpy()]
    for key in table["rows"] + table["columns"]:  # keys shown as text, a missing one (bow has no layer) as '–'
        summary[key] = summary[key].map(_label).astype(object)
    pivot = dict(index=table["rows"], columns=table["columns"], aggfunc="first", sort=False)
    text = summary.pivot_table(values="text", **pivot)
    means = summary.pivot_table(values="mean", **pivot)
    baseline = _majority_row(part, table)
    if baseline is not None:
        text.loc[baseline.name] = [f"{v * 100:.1f}" if pd.notna(v) else "–" for v in baseline.reindex(text.columns)]
    return text.fillna("–"), means


def _majority_row(part: pd.DataFrame, table: dict):
    """The majority-class baseline of every column (the share of the most frequent test label)."""
    ungrouped = part[part["group"].isna()].copy()
    for key in table["columns"]:
        ungrouped[key] = ungrouped[key].map(_label).astype(object)
    values = ungrouped.groupby(table["columns"], dropna=False, sort=False)["majority_baseline"].first()
    if values.isna().all():
        return None
    name = tuple(["majority class"] + [""] * (len(table["rows"]) - 1)) if len(table["rows"]) > 1 else "majority class"
    values.name = name
    return values


def _bold_best(text: pd.DataFrame, means: pd.DataFrame, bold) -> pd.DataFrame:
    out = text.copy()
    values = means.reindex(index=text.index, columns=text.columns).to_numpy(dtype=float)
    for j in range(values.shape[1]):
        column = values[:, j]
        if not np.isnan(column).all():
            for i in np.flatnonzero(np.isclose(column, np.nanmax(column))):
                out.iat[i, j] = bold(out.iat[i, j])
    return out


def _flat(text: pd.DataFrame) -> pd.DataFrame:
    flat = text.copy()
    flat.columns = [" / ".join(_label(c) for c in (col if isinstance(col, tuple) else (col,))) for col in flat.columns]
    flat = flat.reset_index().rename(columns=KEY_LABELS)
    return flat.map(_label)


def to_markdown(text: pd.DataFrame, means: pd.DataFrame) -> str:
    flat = _flat(_bold_best(text, means, lambda s: f"**{s}**"))
    lines = ["| " + " | ".join(flat.columns) + " |", "|" + "---|" * len(flat.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in flat.to_numpy()]
    return "\n".join(lines)


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", DEGENERATE_MARK: r"$^\dagger$", LEFT_OUT_MARK: r"$^\ddagger$", "–": "--",
                  "—": "---", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "→": r"$\rightarrow$", "−": "$-$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def to_latex(text: pd.DataFrame, means: pd.DataFrame, caption: str) -> str:
    flat = _flat(text)
    bold = _flat(_bold_best(text, means, lambda s: f"\x00{s}"))
    body = []
    for plain_row, bold_row in zip(flat.to_numpy(), bold.to_numpy()):
        cells = [r"\textbf{" + latex_escape(b[1:]) + "}" if b.startswith("\x00") else latex_escape(p)
                 for p, b in zip(plain_row, bold_row)]
        body.append(" & ".join(cells) + r" \\")
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\caption{" + latex_escape(caption) + "}",
                      r"\begin{tabular}{" + "l" * len(flat.columns) + "}", r"\toprule",
                      " & ".join(latex_escape(c) for c in flat.columns) + r" \\", r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def write_tables(frame: pd.DataFrame, tables: dict, metric: str, out_dir: Path) -> list[Path]:
    written = []
    for name, table in tables.items():
        text, means = build_table(frame, table, metric)
        if text.empty:
            continue
        note = (f"{metric} in %, mean ± std over seeds (number of seeds); best per column in bold; "
                f"{DEGENERATE_MARK} = one label predicted for ≥ 95% of the examples in some run.")
        if text.map(lambda cell: LEFT_OUT_MARK in str(cell)).to_numpy().any():
            note += (f" {LEFT_OUT_MARK} = some evaluation examples were longer than the context and left out "
                     f"(icl.fit: skip_examples; counted in all.parquet's skipped_examples).")
        write_text(f"### {table['title']}\n\n{to_markdown(text, means)}\n\n{note}\n", out_dir / f"{name}.md")
        write_text(to_latex(text, means, f"{table['title']}. {note}"), out_dir / f"{name}.tex")
        with atomic_path(out_dir / f"{name}.csv") as tmp:
            _flat(text).to_csv(tmp, index=False)
        written += [out_dir / f"{name}.{ext}" for ext in ("md", "tex", "csv")]
    return written


def run_aggregate(metrics: list[str], expected: list[str], tables_dir: str, figures_dir: str, settings: dict) -> dict:
    """Both folders are written whole and then put in place: a killed job leaves the previous ones (or none)."""
    present = [p for p in metrics if Path(p).exists()]
    missing = sorted(set(expected) - set(present))
    frame = load_records(present)
    with atomic_path(tables_dir) as tables_tmp, atomic_path(figures_dir) as figures_tmp:
        tables_tmp.mkdir()
        figures_tmp.mkdir()
        frame.to_parquet(tables_tmp / "all.parquet", index=False)
        frame.to_csv(tables_tmp / "all.csv", index=False)
        write_text("".join(f"{p}\n" for p in expected), tables_tmp / "expected.txt")
        write_text("".join(f"{p}\n" for p in missing), tables_tmp / "missing.txt")
        tables = write_tables(frame, settings["tables"], settings["metric"], tables_tmp)
        figures = write_figures(frame, settings["metric"], figures_tmp, present)
    tables = [Path(tables_dir) / p.name for p in tables]
    figures = [Path(figures_dir) / p.name for p in figures]
    return {"rows": len(frame), "files": len(present), "missing": missing, "tables": tables, "figures": figures}
