# Aggregation: every metrics file of the grid -> results/tables (tidy table, paper tables) and results/figures.
# The list of expected files goes through a file (a grid's paths overflow one shell argument, 128 KiB); the job
# copies it into results/tables/expected.txt.


rule aggregate:
    input:
        metrics_targets(),
    output:
        tables=report(
            directory("results/tables"),
            patterns=["{name}.md"],
            caption="../report/tables.rst",
            category="Tables",
        ),
        figures=report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        settings=as_arg(config["aggregate"]),
    log:
        "results/logs/aggregate.log",
    resources:
        mem_mb=4000,
        runtime=30,
    run:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as expected:
            expected.write("".join(f"{path}\n" for path in input))
            expected.flush()
            shell(
                "lmadapt aggregate --expected {expected.name} --settings {params.settings}"
                " --tables {output.tables} --figures {output.figures} > {log} 2>&1"
            )
