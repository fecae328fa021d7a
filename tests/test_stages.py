"""The stage registry (lmadapt/stages.py) is what the grid, the targets, the preflight, io's producers, the kind
checks and the CLI iterate: a toy stage added as one registry entry, one rule and its function is planned,
costed, parsed and run, and every stage's Slurm group is the profile's."""
import json
import pkgutil
import sys

import pytest
import yaml

from conftest import REPO, fixture_config, planned_jobs, run_snakemake, write_config
from lmadapt.checks import check_config
from lmadapt import layout
from lmadapt.cli import Verb, build_parser, main
from lmadapt.layout import producing_rule
from lmadapt.jobs import Jobs
from lmadapt.preflight import run_preflight
from lmadapt.stages import STAGES, grid

TOY = REPO / "tests/toy_stage"
sys.path.insert(0, str(TOY))
import toy_stage  # noqa: E402


def test_every_stage_is_submitted_in_the_profile_group_it_declares():
    groups = dict(line.split("=") for line in yaml.safe_load((REPO / "slurm/config.yaml").read_text())["groups"])
    assert {name: stage.group for name, stage in STAGES.items()} == {name: groups.get(name) for name in STAGES}


def test_every_entry_names_its_verb_and_check_and_its_metrics_folder_names_its_rule():
    """The registry names what the CLI and the preflight look up (it imports neither), and a metrics file's folder
    is its stage's, which is how an unreadable one is traced to the rule that remakes it."""
    for name, stage in STAGES.items():
        verb = pkgutil.resolve_name(stage.verb)
        assert isinstance(verb, Verb) and verb.name == name
        assert stage.plan is None or callable(pkgutil.resolve_name(stage.plan))
        assert stage.metrics.startswith(f"{layout.METRICS_DIR}/{name}/")
        cell = {key: 1 for key in ("model", "task", "prompt", "method", "k", "seed", "shots")}
        assert producing_rule(stage.metrics.format(**cell)) == name
    assert producing_rule("results/samples/rte/test.parquet") == "sample"
    assert producing_rule("/abs/results/activations/m/rte/none/test.parquet") == "extract"
    assert producing_rule("results/teacher/m/rte/k2_seed1.parquet") == "teacher"
    assert producing_rule("data/my_file.parquet") is None


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(STAGES, "toy", toy_stage.TOY)
    return toy_stage.TOY


def test_a_toy_stage_is_one_entry_and_the_grid_targets_preflight_and_cli_pick_it_up(toy, short_context, tmp_path):
    config = check_config({"seeds": [1, 2], "tasks": fixture_config()["tasks"]})
    assert grid(config)["toy"] == [dict(task=task, seed=seed) for task in ("rte", "tweets") for seed in (1, 2)]
    targets = Jobs(config).inputs("aggregate", {})["metrics"]  # what `rule all` asks for, through aggregate
    assert "results/metrics/toy/tweets/seed2.json" in targets and len([t for t in targets if "/toy/" in t]) == 4
    assert producing_rule("results/metrics/toy/rte/seed1.json") == "toy"
    # the preflight counts its cells and runs its check
    plan = run_preflight(check_config({"seeds": [1], "tasks": {"rte": config["tasks"]["rte"]}}),
                         short_context / "samples", short_context / "models", tmp_path / "p.json", tmp_path / "p.md")
    assert plan["cells"]["toy"] == 1 and {n["stage"] for n in plan["notes"]} >= {"toy"}
    # the CLI has its verb, and runs it
    assert build_parser().parse_args(["toy", "--task", "rte", "--seed", "1", "--sample", "s", "--out", "o"]).seed == 1
    out = tmp_path / "toy.json"
    assert main(["toy", "--task", "rte", "--seed", "1", "--sample", str(short_context / "samples/rte/test.parquet"),
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"] > 0


def test_the_workflow_plans_and_runs_a_toy_stage_added_by_its_rule_and_entry(tmp_path):
    """A Snakefile that registers the toy stage and includes lmadapt's and the toy's rule: `all` asks for every
    toy cell, and a toy job runs after the sample it reads."""
    workflow = tmp_path / "workflow"
    workflow.mkdir()
    for name in ("workflow", "config"):
        (workflow / name).symlink_to(REPO / name)
    (workflow / "Snakefile").write_text(
        f"import sys\nsys.path.insert(0, {str(TOY)!r})\nimport toy_stage\ntoy_stage.register()\n"
        f"TOY_STAGE = {str(TOY / 'toy_stage.py')!r}\n\n\ninclude: {str(REPO / 'Snakefile')!r}\n"
        f"include: {str(TOY / 'toy.smk')!r}\n")
    config = write_config(tmp_path / "config.yaml", dict(fixture_config(), seeds=[1, 2]))
    snakefile = ("-s", str(workflow / "Snakefile"), "--configfile", str(config))
    plan = planned_jobs(run_snakemake(tmp_path, "all", *snakefile, "-n"))
    assert plan["toy"] == 4 and plan["bow"] > 0
    run_snakemake(tmp_path, "results/metrics/toy/rte/seed1.json", *snakefile)
    assert json.loads((tmp_path / "results/metrics/toy/rte/seed1.json").read_text())["rows"] == 6  # rte's n_test
