# Preflight: every cell checked with the real tokenizers and samples, and costed, before the model jobs matter.
# A local rule (seconds, on the login node) that runs as soon as the models are fetched and the samples drawn;
# run it alone before a submission: `snakemake --profile slurm --configfile config/paper.yaml preflight`.


rule preflight:
    input:
        models=used_model_dirs(),
        samples=sample_targets(),
        instructions=preflight_data(),
    output:
        json="results/plan/preflight.json",
        md=report("results/plan/preflight.md", caption="../report/preflight.rst", category="Plan"),
    log:
        "results/logs/preflight.log",
    benchmark:
        "results/benchmarks/preflight/preflight.tsv"
    priority: 100
    localrule: True
    conda:
        CONDA_ENV
    params:
        config=preflight_config,
    shell:
        "lmadapt preflight --config-json {params.config} --samples results/samples --models resources/models"
        " --out-json {output.json} --out-md {output.md} > {log} 2>&1"
