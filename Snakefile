# lmadapt: how well does a language model adapt to a classification task? See README.md and docs/design.md.
# The rules know paths and resources; the lmadapt package (workflow/lmadapt) knows ML.


from pathlib import Path

# The embedded default, unless --configfile names another (Snakemake would merge the two, mixing their grids).
if not config.get("tasks"):

    configfile: Path(workflow.basedir) / "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/derive.smk"
include: "workflow/rules/preflight.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/icl.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        all_targets,
        layout.PREFLIGHT_JSON,
        layout.RESOLVED_CONFIG,
        layout.RUNTIMES,
        layout.CALIBRATION_JSON,
        derived_summary_target(),
        layout.TABLES,
        layout.FIGURES,
