# Preflight: every cell checked with the real tokenizers and samples, and costed, before the model jobs matter.
# A checkpoint: the pilot (below) reads the plan to choose its cells.
# A local rule (seconds, on the login node) that runs as soon as the models are fetched and the samples drawn;
# run it alone before a submission: `snakemake --profile slurm --configfile config/paper.yaml preflight`. A
# change to how jobs run (a batch size) does not rerun it: `--forcerun preflight` refreshes its memory estimate.


checkpoint preflight:
    input:
        **JOBS.inputs("preflight", {}),
    output:
        json=layout.PREFLIGHT_JSON,
        md=report(layout.PREFLIGHT_MD, caption="../report/preflight.rst", category="Plan"),
    log:
        layout.log("preflight"),
    benchmark:
        layout.benchmark("preflight")
    priority: 100
    localrule: True
    conda:
        CONDA_ENV
    params:
        **job_params("preflight"),  # what makes the plan stale (the grid and what its jobs compute with)
        grid=derived_arg(config),  # what it reads, how jobs run included (batch sizes: its memory estimate)
    shell:
        "lmadapt preflight --config-json {params.grid} --samples results/samples --models resources/models"
        " --out-json {output.json} --out-md {output.md} > {log} 2>&1"


# The pilot (`snakemake --profile slurm --configfile config/paper.yaml pilot`): per stage, model and method the
# cheapest and the most expensive cell the preflight costed (ordinary cells: the full run does not redo them),
# then the calibration of the cost model on them. Until the grid's own calibration exists, every job's request
# comes from it (lmadapt/sizing.py).
rule pilot:
    input:
        pilot_targets,
        plan=layout.PREFLIGHT_JSON,
    output:
        json=layout.PILOT_CALIBRATION_JSON,
        md=report(layout.PILOT_CALIBRATION_MD, caption="../report/calibration.rst", category="Plan"),
    log:
        layout.log("pilot"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "lmadapt calibrate --plan {input.plan} --benchmarks results/benchmarks --out-json {output.json}"
        " --out-md {output.md} > {log} 2>&1"
