"""The figures, from a synthetic grid of runs written with the real record builder (3 models x 4 methods x 3 k x
3 seeds, probes over 3 layers, 2 poolings and 2 prompts, HANS per heuristic): panels, lines and legend entries
counted from the matplotlib objects, and no point or error bar outside its axes."""
import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection

from lmadapt.aggregate import load_records
from lmadapt.figures import build_figures, method_color
from lmadapt.io import write_json
from lmadapt.metrics import classification_record, finish

MODELS, KS, SEEDS = ["opt_125m", "opt_350m", "opt_1_3b"], [2, 8, 32], [0, 1, 2]


def run(folder, name, keys, correct, groups=None, seconds=1.0, split="test", n=20):
    y_true = [0, 1] * (n // 2)
    y_pred = [t if i < correct else 1 - t for i, t in enumerate(y_true)]
    record = classification_record(dict(keys, split=split), ["entailment", "not_entailment"], y_true, y_pred,
                                   groups=groups)
    path = folder / f"{name}.json"
    write_json(finish([record], {"wall_seconds": seconds, "device": "cpu"}, {}), path)
    return str(path)


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(0)
    paths = []
    heuristics = {"heuristic": ["lexical_overlap"] * 10 + ["subsequence"] * 10}
    for seed in SEEDS:
        for k in KS:
            base = dict(task="rte", k=k, seed=seed)
            paths.append(run(folder, f"bow_k{k}_s{seed}", dict(base, model="none", method="bow_count", examples=2 * k,
                                                               prompt="none"), 10 + rng.integers(0, 5)))
            for model in MODELS:
                cell = dict(base, model=model)
                paths.append(run(folder, f"icl_{model}_k{k}_s{seed}", dict(cell, method="icl", examples=k,
                                                                           prompt="gpt3"), 11 + rng.integers(0, 8)))
                paths.append(run(folder, f"icl_{model}_k{k}_s{seed}_hans", dict(cell, method="icl", examples=k,
                                                                                prompt="gpt3"),
                                 8 + rng.integers(0, 8), heuristics, split="ood_hans"))
                paths.append(run(folder, f"head_{model}_k{k}_s{seed}", dict(cell, method="head", examples=2 * k,
                                                                            prompt="gpt3"), 12 + rng.integers(0, 8),
                                 seconds=30.0))
                for layer in (0, 6, 12):
                    for pooling in ("last", "mean"):
                        for prompt in ("none", "fewshot"):
                            paths.append(run(folder, f"probe_{model}_k{k}_s{seed}_{layer}{pooling}{prompt}",
                                             dict(cell, method="probe_logreg", examples=2 * k, layer=layer,
                                                  pooling=pooling, prompt=prompt), 10 + rng.integers(0, 10)))
    for model in MODELS:  # zero-shot ICL: x = 0 labeled examples
        paths.append(run(folder, f"icl0_{model}", dict(task="rte", model=model, k=0, seed=0, method="icl",
                                                       examples=0, prompt="gpt3"), 12))
    return build_figures(load_records(paths), "accuracy", paths)


def legend_labels(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def assert_nothing_clipped(fig):
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        points = [line.get_xydata() for line in ax.lines if line.get_label() != "majority class"]
        points += [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]  # scatter points
        points += [np.concatenate(c.get_segments()) for c in ax.collections  # error bars
                   if isinstance(c, LineCollection) and c.get_segments()]
        xy = np.concatenate([np.asarray(p, dtype=float).reshape(-1, 2) for p in points])
        xy = xy[np.isfinite(xy).all(1)]
        assert len(xy) and (xy[:, 0] >= x0).all() and (xy[:, 0] <= x1).all(), (ax.get_title(), ax.get_xlim())
        assert (xy[:, 1] >= y0).all() and (xy[:, 1] <= y1).all(), (ax.get_title(), ax.get_ylim())


def test_accuracy_vs_examples_one_panel_per_model_and_a_line_per_method_and_variant(figures):
    fig = figures["accuracy_vs_examples"]
    assert [ax.get_title() for ax in fig.axes] == [f"rte · {m}" for m in MODELS]  # the grid's order
    for ax in fig.axes:
        # icl, head, bow_count, and probe_logreg for 2 poolings x 2 prompts: 7 lines, never averaged together
        assert len(ax.containers) == 7
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2", "4", "8", "16", "32", "64"]
        assert ax.get_xscale() == "log"
    labels = legend_labels(fig)
    assert len(labels) == 8 and "majority class" in labels and "icl (gpt3), n=1–3" in labels
    assert "probe_logreg (mean/fewshot), n=3" in labels and "bow_count, n=3" in labels
    assert fig.get_size_inches()[0] == pytest.approx(6.9)
    assert_nothing_clipped(fig)


def test_probe_accuracy_vs_layer_panels_by_model_and_k(figures):
    fig = figures["probe_accuracy_vs_layer"]
    assert len(fig.axes) == len(MODELS) * len(KS)
    assert all(len(ax.containers) == 4 for ax in fig.axes)  # 2 poolings x {none, fewshot}
    assert len(legend_labels(fig)) == 5
    assert_nothing_clipped(fig)


def test_in_vs_out_of_domain_per_heuristic_and_cost(figures):
    fig = figures["in_vs_out_of_domain"]
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in visible] == ["hans", "hans · lexical_overlap", "hans · subsequence"]
    assert all(len(ax.collections) == len(MODELS) for ax in visible)  # icl of each model
    assert_nothing_clipped(fig)
    cost = figures["cost_vs_accuracy"]
    assert len(cost.axes) == 1 and cost.axes[0].get_xscale() == "log"
    assert len(legend_labels(cost)) == 3 * len(MODELS) + 1  # icl, head, probe of each model; bow
    assert_nothing_clipped(cost)


def test_one_colour_per_method_in_every_figure(figures):
    for fig in figures.values():
        for ax in fig.axes:
            for container in ax.containers:
                method = container.get_label().split(" ")[0].rstrip(",")
                assert container.lines[0].get_color() == method_color(method)
