"""The paper's figures, from the tidy table of every run.

Nothing is averaged over models, poolings, patterns, prompts or k: each is a panel, a line or a point. Seeds
are the only thing a point summarises (mean, error bar = standard deviation, n in the legend). One colour per
method in every figure (colour-blind safe), one marker per model; x = labeled examples used in total (training
rows plus demonstrations: the one unit for ICL, probes and fine-tuning) on a log2 axis whose ticks are the
values that occur, 0 included. Legends sit outside the panels. Sized for a two-column paper (6.9 in wide),
saved as vector PDF and 300 dpi PNG.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path
from .methods import METHODS

# Okabe & Ito's colour-blind safe palette, then Tol's wine, a grey, Tol's teal and indigo: one colour per known
# method, in this order.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#882255",
           "#999999", "#44AA99", "#332288"]
KNOWN_METHODS = ["icl", "probe_logreg", "probe_mlp", "bow_count", "bow_tfidf", *METHODS]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
LINESTYLES = ["-", "--", "-.", (0, (3, 1, 1, 1, 1, 1)), (0, (5, 2)), (0, (1, 2))]  # the variants of one method
WIDTH = 6.9  # inches: two columns of a paper; one column is 3.3
PANEL_HEIGHT = 2.0
MODEL_FREE = "none"  # the model of a bag-of-words run


def method_color(method: str) -> str:
    index = KNOWN_METHODS.index(method) if method in KNOWN_METHODS else zlib.crc32(method.encode())
    return PALETTE[index % len(PALETTE)]


def in_order(values) -> list:
    """Distinct values in their first order of appearance (the config's order of models, tasks, ...)."""
    return list(dict.fromkeys(v for v in values if isinstance(v, str)))


def model_markers(models) -> dict[str, str]:
    return {model: MARKERS[i % len(MARKERS)] for i, model in enumerate(
        m for m in in_order(models) if m != MODEL_FREE)} | {MODEL_FREE: "x"}


def variant(row) -> str:
    """What distinguishes two lines of one method in one panel: the prompt or pattern, and the pooling."""
    parts = [str(row[key]) for key in ("pooling", "prompt") if isinstance(row[key], str) and row[key] != "none"]
    return "/".join(parts)


def seed_stats(frame: pd.DataFrame, by: list[str], x: str, metric: str) -> pd.DataFrame:
    """Mean, std and number of seeds of each (by..., x)."""
    return (frame.groupby(by + [x], dropna=False)[metric].agg(["mean", "std", "count"]).reset_index()
            .sort_values(by + [x]))


def log2_axis(ax, values) -> dict[float, float]:
    """A log2 x axis with the values that occur as ticks (but none printed over another); 0 drawn half a step
    left of the smallest positive value and labelled 0. Returns value -> position."""
    values = sorted(set(float(v) for v in values))
    positive = [v for v in values if v > 0]
    low = min(positive) / 2 if positive else 1.0
    where = {v: (v if v > 0 else low) for v in values}
    ax.set_xscale("log", base=2)
    shown = []  # a value closer than a fifth of a doubling to the last shown one would print over it
    for v in values:
        if not shown or np.log2(where[v] / where[shown[-1]]) >= 0.2:
            shown.append(v)
    ax.set_xticks([where[v] for v in shown])
    ax.set_xticklabels([f"{v:g}" for v in shown])
    ax.minorticks_off()
    ax.set_xlim(min(where.values()) / 1.4, max(where.values()) * 1.4)
    return where


def n_label(counts) -> str:
    low, high = int(min(counts)), int(max(counts))
    return f"n={low}" if low == high else f"n={low}–{high}"


def outside_legend(fig, axes) -> None:
    """One legend for the figure, right of the panels, each label once."""
    handles = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                   fontsize=7)


def finish_panel(ax, panel: pd.DataFrame, title: str, ylabel: str) -> None:
    """The majority-class line, the title and the labels of a panel of lines."""
    majority = panel["majority_baseline"].dropna()
    if len(majority):
        ax.axhline(majority.iloc[0], color="grey", linestyle=":", linewidth=1, label="majority class")
    ax.set_title(title, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=6)


def panel_grid(plt, rows: int, cols: int, **kwargs):
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, max(PANEL_HEIGHT * rows, 2.4)), squeeze=False,
                             constrained_layout=True, **kwargs)
    return fig, axes


def accuracy_vs_examples(plt, test: pd.DataFrame, metric: str):
    """Panels = task (rows) x model (columns); a line per method and variant; probes at their deepest layer."""
    deepest = test.groupby(["task", "model", "method"], dropna=False)["layer"].transform("max")
    data = test[(test["layer"].isna() | (test["layer"] == deepest)) & test["examples"].notna()].copy()
    data["variant"] = data.apply(variant, axis=1)
    tasks = in_order(data["task"])
    models = [m for m in in_order(data["model"]) if m != MODEL_FREE] or [MODEL_FREE]
    markers = model_markers(models)
    variants = {method: sorted(group["variant"].unique()) for method, group in data.groupby("method")}
    fig, axes = panel_grid(plt, len(tasks), len(models), sharey="row")
    for r, task in enumerate(tasks):
        for c, model in enumerate(models):
            ax = axes[r][c]
            panel = data[(data["task"] == task) & data["model"].isin([model, MODEL_FREE])]  # bow: in every panel
            where = log2_axis(ax, panel["examples"]) if len(panel) else {}
            for (method, name), lines in seed_stats(panel, ["method", "variant"], "examples", metric).groupby(
                    ["method", "variant"], sort=True):
                label = f"{method}{f' ({name})' if name else ''}, {n_label(lines['count'])}"
                style = LINESTYLES[variants[method].index(name) % len(LINESTYLES)]
                ax.errorbar([where[v] for v in lines["examples"]], lines["mean"], yerr=lines["std"].fillna(0),
                            color=method_color(method), marker=markers[model], markersize=3, capsize=2,
                            linewidth=1, linestyle=style, label=label)
            finish_panel(ax, panel, f"{task} · {model}", metric if c == 0 else "")
    fig.supxlabel("labeled examples used (training rows + demonstrations)", fontsize=7)
    outside_legend(fig, axes)
    return fig


def probe_accuracy_vs_layer(plt, test: pd.DataFrame, metric: str):
    """Panels = (task, model) rows x k columns; a line per probe, pooling and prompt (none / fewshot)."""
    probes = test[test["method"].str.startswith("probe") & test["layer"].notna()]
    if probes.empty:
        return None
    rows = list(dict.fromkeys(zip(probes["task"], probes["model"])))
    ks = sorted(probes["k"].unique())
    variants = sorted(set(zip(probes["pooling"], probes["prompt"])), key=lambda v: (v[1] != "none", v))
    markers = model_markers(probes["model"])
    fig, axes = panel_grid(plt, len(rows), len(ks), sharey="row")
    for r, (task, model) in enumerate(rows):
        for c, k in enumerate(ks):
            ax = axes[r][c]
            panel = probes[(probes["task"] == task) & (probes["model"] == model) & (probes["k"] == k)]
            for (method, pooling, prompt), lines in seed_stats(panel, ["method", "pooling", "prompt"], "layer",
                                                               metric).groupby(["method", "pooling", "prompt"]):
                ax.errorbar(lines["layer"], lines["mean"], yerr=lines["std"].fillna(0), color=method_color(method),
                            marker=markers[model], markersize=3, capsize=2, linewidth=1,
                            linestyle=LINESTYLES[variants.index((pooling, prompt)) % len(LINESTYLES)],
                            label=f"{method} ({pooling}/{prompt}), {n_label(lines['count'])}")
            finish_panel(ax, panel, f"{task} · {model} · k={k}", metric if c == 0 else "")
    fig.supxlabel("layer", fontsize=7)
    outside_legend(fig, axes)
    return fig


def in_vs_out_of_domain(plt, data: pd.DataFrame, metric: str):
    """One point per run: in-domain against out-of-domain; a panel for the whole out-of-domain set and one per
    group (HANS: per heuristic), as in Mosbach et al. 2023."""
    keys = ["task", "model", "method", "pooling", "layer", "prompt", "k", "seed"]
    test = data[(data["split"] == "test") & data["group"].isna()]
    ood = data[data["split"].str.startswith("ood_")]
    if ood.empty:
        return None
    paired = test[keys + [metric]].merge(ood[keys + ["split", "group", metric]], on=keys, suffixes=("_in", "_out"))
    if paired.empty:
        return None
    paired["panel"] = paired["split"].str.removeprefix("ood_") + paired["group"].map(
        lambda g: f" · {g.split('=', 1)[-1]}" if isinstance(g, str) else "")
    panels = sorted(paired["panel"].unique(), key=lambda p: (" · " in p, p))
    markers = model_markers(paired["model"])
    cols = min(len(panels), 4)
    fig, axes = panel_grid(plt, -(-len(panels) // cols), cols, sharex=True, sharey=True)
    for ax, name in zip(np.ravel(axes), panels):
        for (method, model), points in paired[paired["panel"] == name].groupby(["method", "model"]):
            ax.scatter(points[f"{metric}_in"], points[f"{metric}_out"], color=method_color(method),
                       marker=markers[model], s=10, alpha=0.8, label=f"{method} · {model}")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_title(name, fontsize=8)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=6)
    for ax in np.ravel(axes)[len(panels):]:
        ax.set_visible(False)
    fig.supxlabel(f"in-domain {metric}", fontsize=7)
    fig.supylabel(f"out-of-domain {metric}", fontsize=7)
    outside_legend(fig, axes)
    return fig


def cost_vs_accuracy(plt, test: pd.DataFrame, metric: str):
    """One point per run: its wall seconds (log) against its score; panels = tasks."""
    runs = test[test["wall_seconds"].notna() & (test["wall_seconds"] > 0)]
    if runs.empty:
        return None
    tasks = in_order(runs["task"])
    markers = model_markers(runs["model"])
    fig, axes = panel_grid(plt, 1, len(tasks), sharey=True)
    for ax, task in zip(axes[0], tasks):
        for (method, model), points in runs[runs["task"] == task].groupby(["method", "model"]):
            ax.scatter(points["wall_seconds"], points[metric], color=method_color(method), marker=markers[model],
                       s=10, alpha=0.8, label=f"{method} · {model}")
        ax.set_xscale("log")
        ax.margins(x=0.1, y=0.05)
        ax.set_title(task, fontsize=8)
        ax.set_xlabel("seconds per run (wall, its device)", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel(metric, fontsize=7)
    outside_legend(fig, axes)
    return fig


def build_figures(frame: pd.DataFrame, metric: str, sources: list[str] | None = None) -> dict:
    """{name: matplotlib figure} of every figure the data allows. sources: the metrics files in the grid's
    order (the config's order of tasks and models), which panels follow; else the table's order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if sources:
        rank = {str(path): i for i, path in enumerate(sources)}
        frame = frame.iloc[np.argsort(frame["source"].map(rank).fillna(len(rank)).to_numpy(), kind="stable")]
    data = frame[frame[metric].notna()]
    test = data[(data["split"] == "test") & data["group"].isna()]
    figures = {}
    if len(test):
        figures["accuracy_vs_examples"] = accuracy_vs_examples(plt, test, metric)
        figures["cost_vs_accuracy"] = cost_vs_accuracy(plt, test, metric)
        figures["probe_accuracy_vs_layer"] = probe_accuracy_vs_layer(plt, test, metric)
    figures["in_vs_out_of_domain"] = in_vs_out_of_domain(plt, data, metric)
    return {name: fig for name, fig in figures.items() if fig is not None}


def write_figures(frame: pd.DataFrame, metric: str, out_dir: Path, sources: list[str] | None = None) -> list[Path]:
    import matplotlib.pyplot as plt

    written = []
    for name, fig in build_figures(frame, metric, sources).items():
        for ext in ("pdf", "png"):
            with atomic_path(Path(out_dir) / f"{name}.{ext}") as tmp:
                fig.savefig(tmp, format=ext, bbox_inches="tight", dpi=300)
            written.append(Path(out_dir) / f"{name}.{ext}")
        plt.close(fig)
    return written
