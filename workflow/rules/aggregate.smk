# Aggregation: every metrics file of the grid -> results/tables (tidy table, paper tables) and results/figures.


def metrics_targets():
    return probe_targets() + bow_targets() + icl_targets() + finetune_targets()


rule aggregate:
    input:
        metrics_targets(),
    output:
        tables=report(directory("results/tables"), patterns=["{name}.md"], caption="../report/tables.rst",
                      category="Tables"),
        figures=report(directory("results/figures"), patterns=["{name}.png"], caption="../report/figures.rst",
                       category="Figures"),
    params:
        settings=as_arg(config["aggregate"]),
        expected=lambda w, input: "\n".join(input),
    log:
        "results/logs/aggregate.log",
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "mkdir -p {output.tables} && printf '%s\\n' {params.expected:q} > {output.tables}/expected.txt &&"
        " lmadapt aggregate --expected {output.tables}/expected.txt --settings {params.settings}"
        " --tables {output.tables} --figures {output.figures} > {log} 2>&1"
