# Probes: activations of every sample (without a prompt, and after each seed's few-shot prefix), classifiers on
# them, and the bag-of-words baseline on the raw text. One extract job per (model, task, prompt, sample): adding
# a k or a seed adds jobs and reruns none. One probe job trains every layer, pooling and probe type of a cell.


rule extract:
    input:
        model=lambda w: model_dir(w.model),
        sample="results/samples/{task}/{sample}.parquet",
        demos=extract_demos,
    output:
        "results/activations/{model}/{task}/{prompt}/{sample}.parquet",
    wildcard_constraints:
        prompt=r"none|fewshot_seed\d+",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "prompt"),
        settings=extract_settings,
        demos=extract_demos_arg,
    log:
        "results/logs/extract/{model}/{task}/{prompt}/{sample}.log",
    threads: THREADS
    resources:
        **model_resources(),
        runtime=240,
    shell:
        JOB_ENV + " lmadapt extract --model-dir {input.model} --task {wildcards.task} --task-config {params.task}"
        " --sample {input.sample} --out {output} {params.demos} --settings {params.settings} > {log} 2>&1"


rule probe:
    input:
        unpack(probe_activations),
        samples=lambda w: eval_samples(w.task),
    output:
        "results/metrics/probe/{model}/{task}/{prompt}/k{k}_seed{seed}.json",
    wildcard_constraints:
        prompt="none|fewshot",
    params:
        settings=as_arg(config["probe"]),
        cell=cell_keys,
        evals=probe_evals,
        samples=lambda w: eval_arg(f"results/samples/{w.task}", w.task),
    log:
        "results/logs/probe/{model}/{task}/{prompt}/k{k}_seed{seed}.log",
    threads: THREADS
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=60,
    shell:
        JOB_ENV + " lmadapt probe --train {input.train} --eval {params.evals} --eval-sample {params.samples}"
        " --settings {params.settings} --keys {params.cell} --out {output} > {log} 2>&1"


rule bow:
    input:
        train="results/samples/{task}/train_k{k}_seed{seed}.parquet",
        evals=lambda w: eval_samples(w.task),
    output:
        "results/metrics/bow/{task}/k{k}_seed{seed}.json",
    params:
        settings=stage_settings("bow"),
        cell=lambda w: as_arg(cell_of(w) | {"model": "none", "prompt": "none"}),
        evals=lambda w: eval_arg(f"results/samples/{w.task}", w.task),
    log:
        "results/logs/bow/{task}/k{k}_seed{seed}.log",
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=30,
    shell:
        "lmadapt bow --train {input.train} --eval {params.evals} --settings {params.settings} --keys {params.cell}"
        " --out {output} > {log} 2>&1"
