# The toy stage's one rule (tests/test_stages.py): its command is lmadapt's CLI with the toy stage registered.


rule toy:
    input:
        sample=layout.sample_path("{task}", "test"),
    output:
        "results/metrics/toy/{task}/seed{seed}.json",
    log:
        "results/logs/toy/{task}/seed{seed}.log",
    params:
        stage=TOY_STAGE,
    shell:
        "python {params.stage} --task {wildcards.task} --seed {wildcards.seed} --sample {input.sample} --out {output}"
        " > {log} 2>&1"
