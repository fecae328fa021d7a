# Aggregation: every metrics file of the grid -> results/tables (tidy table, paper tables) and results/figures;
# then what the report adds to them: the resolved config and each rule's runtime and memory (from the
# `benchmark:` file every job writes). The list of expected files goes through a file (common.smk: listed).


rule aggregate:
    input:
        JOBS.inputs("aggregate", {})["metrics"],
    output:
        tables=report(
            directory(layout.TABLES),
            patterns=["{name}.md"],
            caption="../report/tables.rst",
            category="Tables",
        ),
        figures=report(
            directory(layout.FIGURES),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        layout.log("aggregate"),
    benchmark:
        layout.benchmark("aggregate")
    resources:
        **sized("aggregate", runtime=30, mem_mb=4000),
    params:
        **job_params("aggregate"),
    run:
        with listed(input) as expected:
            shell(
                "lmadapt aggregate --expected {expected} --settings {params.settings}"
                " --tables {output.tables} --figures {output.figures} > {log} 2>&1"
            )


rule runtimes:
    input:
        # written after every other job (the tables after every classification job, the derived models' summary
        # after their training), so every job's benchmark is in
        layout.TABLES,
        derived_summary_target(),
    output:
        report(layout.RUNTIMES, caption="../report/runtimes.rst", category="Plan"),
    log:
        layout.log("runtimes"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "lmadapt runtimes --benchmarks results/benchmarks --out {output} > {log} 2>&1"


rule resolved_config:
    output:
        report(layout.RESOLVED_CONFIG, caption="../report/config.rst", category="Plan"),
    log:
        layout.log("resolved_config"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        **job_params("resolved_config"),
    shell:
        "lmadapt resolved-config --config-json {params.config} --out {output} > {log} 2>&1"


# The cost model calibrated on every finished job (local, seconds): fits per stage, model and device, the page of
# predicted against measured, and the grid's status. After every other job, as runtimes; no table depends on it.
# The requests of jobs still to run read it (lmadapt/sizing.py), which never reruns one.
rule calibration:
    input:
        layout.TABLES,
        derived_summary_target(),
        layout.RUNTIMES,  # the last jobs but this one: the status it writes sees none of them running
        layout.RESOLVED_CONFIG,
        plan=layout.PREFLIGHT_JSON,
    output:
        json=layout.CALIBRATION_JSON,
        md=report(layout.CALIBRATION_MD, caption="../report/calibration.rst", category="Plan"),
        status=report(layout.STATUS_MD, caption="../report/status.rst", category="Plan"),
    log:
        layout.log("calibration"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        config=derived_arg(config),
    shell:
        "lmadapt calibrate --plan {input.plan} --benchmarks results/benchmarks --out-json {output.json}"
        " --out-md {output.md} > {log} 2>&1 && lmadapt status --config-json {params.config} --out {output.status}"
        " >> {log} 2>&1"
