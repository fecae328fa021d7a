# Probes: activations of every sample (with and without a few-shot prefix), classifiers on them, and the
# bag-of-words baseline on the raw text. One extract job per prompt folder (the model loads and the prefix is
# encoded once); one probe job trains every layer, pooling and probe type of a cell.


def extract_samples(wildcards):
    """none: every training sample of the task and its evaluation sets; fewshot_k{k}_seed{seed}: that cell's
    training sample and the evaluation sets, all after the same prefix."""
    task = wildcards.task
    if wildcards.prompt == "none":
        names = [f"train_k{k}_seed{seed}" for k, seed in cells(task)]
    else:
        names = [wildcards.prompt.replace("fewshot_", "train_")]
    return [f"results/samples/{task}/{name}.parquet" for name in names + eval_splits(task)]


def demonstration_sample(wildcards):
    """A few-shot prefix draws its demonstrations from the training sample of its (k, seed)."""
    if wildcards.prompt == "none":
        return []
    return f"results/samples/{wildcards.task}/{wildcards.prompt.replace('fewshot_', 'train_')}.parquet"


rule extract:
    input:
        model=lambda w: model_dir(w.model),
        samples=extract_samples,
        demos=demonstration_sample,
    output:
        directory("results/activations/{model}/{task}/{prompt}"),
    wildcard_constraints:
        prompt=r"none|fewshot_k\d+_seed\d+",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "prompt"),
        settings=as_arg({key: value for key, value in config["extract"].items() if key not in ("models", "tasks", "prompts")}
                        | {"dtype": "auto"}),
        demos=lambda w, input: f"--demos {input.demos} --seed {w.prompt.rsplit('_seed', 1)[1]}" if input.demos else "",
        outs=lambda w, input, output: " ".join(f"{output}/{Path(p).name}" for p in input.samples),
    log:
        "results/logs/extract/{model}/{task}/{prompt}.log",
    threads: THREADS
    resources:
        mem_mb=lambda w, attempt: config["models"][w.model]["mem_mb"] * attempt,
        runtime=240,
        gpu=lambda w: min(config["models"][w.model]["gpus"], 1),
    shell:
        JOB_ENV + " lmadapt extract --model-dir {input.model} --task {wildcards.task} --task-config {params.task}"
        " --sample {input.samples} --out {params.outs} {params.demos} --settings {params.settings} > {log} 2>&1"


def activation_dir(wildcards):
    """none: activations shared by every cell; fewshot: those computed after this cell's prefix."""
    base = f"results/activations/{wildcards.model}/{wildcards.task}"
    return f"{base}/none" if wildcards.prompt == "none" else f"{base}/fewshot_k{wildcards.k}_seed{wildcards.seed}"


rule probe:
    input:
        activations=activation_dir,
        samples=lambda w: eval_samples(w.task),
    output:
        "results/metrics/probe/{model}/{task}/{prompt}/k{k}_seed{seed}.json",
    wildcard_constraints:
        prompt="none|fewshot",
    params:
        settings=as_arg(config["probe"]),
        cell=lambda w: as_arg({"task": w.task, "model": w.model, "prompt": w.prompt, "k": int(w.k), "seed": int(w.seed)}),
        evals=lambda w, input: " ".join(f"{s}={input.activations}/{s}.parquet" for s in eval_splits(w.task)),
        samples=lambda w: " ".join(f"{s}=results/samples/{w.task}/{s}.parquet" for s in eval_splits(w.task)),
    log:
        "results/logs/probe/{model}/{task}/{prompt}/k{k}_seed{seed}.log",
    threads: THREADS
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=60,
    shell:
        JOB_ENV + " lmadapt probe --train {input.activations}/train_k{wildcards.k}_seed{wildcards.seed}.parquet"
        " --eval {params.evals} --eval-sample {params.samples} --settings {params.settings} --keys {params.cell}"
        " --out {output} > {log} 2>&1"


rule bow:
    input:
        train="results/samples/{task}/train_k{k}_seed{seed}.parquet",
        evals=lambda w: eval_samples(w.task),
    output:
        "results/metrics/bow/{task}/k{k}_seed{seed}.json",
    params:
        settings=as_arg({key: value for key, value in config["bow"].items() if key != "tasks"}),
        cell=lambda w: as_arg({"task": w.task, "model": "none", "prompt": "none", "k": int(w.k), "seed": int(w.seed)}),
        evals=lambda w: " ".join(f"{split}=results/samples/{w.task}/{split}.parquet" for split in eval_splits(w.task)),
    log:
        "results/logs/bow/{task}/k{k}_seed{seed}.log",
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=30,
    shell:
        "lmadapt bow --train {input.train} --eval {params.evals} --settings {params.settings} --keys {params.cell}"
        " --out {output} > {log} 2>&1"
