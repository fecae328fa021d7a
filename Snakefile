# lmadapt: how well does a decoder LM adapt to a classification task? See README.md and DESIGN.md.
# The rules know paths and resources; the lmadapt package (workflow/lmadapt) knows ML.


# The embedded default, unless --configfile names another (Snakemake would merge the two, mixing their grids).
if not config.get("tasks"):

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


rule all:
    input:
        all_targets,
    default_target: True
