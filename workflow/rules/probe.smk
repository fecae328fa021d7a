# Probes: activations of every sample (without a prompt, and after each seed's few-shot prefix), classifiers on
# them, and the bag-of-words baseline on the raw text. One extract job per (model, task, prompt, sample): adding
# a k or a seed adds jobs and reruns none. One probe job trains every layer, pooling and probe type of a cell.


rule extract:
    input:
        unpack(job_inputs("extract")),
        sample=layout.SAMPLE,
    output:
        layout.ACTIVATIONS,
    log:
        layout.log("extract"),
    benchmark:
        layout.benchmark("extract")
    wildcard_constraints:
        prompt=r"none|fewshot_seed\d+",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **sized("extract", runtime=240),
        gpu=job_gpus("extract"),
    params:
        **job_params("extract"),
        demos=extract_demos_arg,
        run=run_settings("extract"),
    shell:
        offline(
            "lmadapt extract --model-dir {input.model} --task {wildcards.task} --task-config {params.task}"
            " --sample {input.sample} --out {output} {params.demos} --settings {params.settings}"
            " --run-settings {params.run} > {log} 2>&1"
        )


rule probe:
    input:
        unpack(job_inputs("probe")),
    output:
        layout.METRICS["probe"],
    log:
        layout.log("probe"),
    benchmark:
        layout.benchmark("probe")
    wildcard_constraints:
        prompt="none|fewshot",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **sized("probe", runtime=60, mem_mb=4000),
    params:
        **job_params("probe"),
        evals=probe_evals,
    shell:
        offline(
            "lmadapt probe --train {input.train} --eval {params.evals} --eval-sample {params.samples}"
            " --settings {params.settings} --keys {params.cell} --out {output} > {log} 2>&1"
        )


rule bow:
    input:
        unpack(job_inputs("bow")),
        train=layout.TRAIN_SAMPLE,
    output:
        layout.METRICS["bow"],
    log:
        layout.log("bow"),
    benchmark:
        layout.benchmark("bow")
    wildcard_constraints:
        k=r"\d+|all",
    conda:
        CONDA_ENV
    resources:
        **sized("bow", runtime=30, mem_mb=2000),
    params:
        **job_params("bow"),
    shell:
        "lmadapt bow --train {input.train} --eval {params.evals} --settings {params.settings} --keys {params.cell}"
        " --out {output} > {log} 2>&1"
