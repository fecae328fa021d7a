# Fine-tuning: the prompted teacher's label distribution (once per training sample, reused by every student),
# then one DeepSpeed job per (model, task, method, k, seed). On a GPU cluster the job asks Slurm for the model's
# GPUs with tasks=0 (one task: the plugin must not start a copy per GPU) and torchrun starts one process per GPU.
# Checkpoints live in results/finetune/... outside the declared outputs, so a restarted job resumes from them.


rule teacher:
    input:
        model=lambda w: model_dir(w.model),
        train="results/samples/{task}/train_k{k}_seed{seed}.parquet",
    output:
        "results/teacher/{model}/{task}/k{k}_seed{seed}.parquet",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "prompt"),
        settings=as_arg({"shots": config["finetune"]["distill"]["shots"], "pattern": config["finetune"]["pattern"],
                         "batch_size": config["finetune"]["distill"]["batch_size"], "dtype": "auto"}),
    log:
        "results/logs/teacher/{model}/{task}/k{k}_seed{seed}.log",
    threads: THREADS
    resources:
        mem_mb=lambda w, attempt: config["models"][w.model]["mem_mb"] * attempt,
        runtime=60,
        gpu=lambda w: min(config["models"][w.model]["gpus"], 1),
    shell:
        JOB_ENV + " lmadapt teacher --model-dir {input.model} --task {wildcards.task} --task-config {params.task}"
        " --train {input.train} --seed {wildcards.seed} --settings {params.settings} --out {output} > {log} 2>&1"


def finetune_launcher(wildcards):
    """One process per GPU through torchrun; a plain process on CPU or one GPU."""
    gpus = config["models"][wildcards.model]["gpus"]
    return f"torchrun --standalone --nproc_per_node {gpus} -m lmadapt" if gpus > 1 else "lmadapt"


rule finetune:
    input:
        model=lambda w: model_dir(w.model),
        train="results/samples/{task}/train_k{k}_seed{seed}.parquet",
        evals=lambda w: eval_samples(w.task),
        teacher=lambda w: f"results/teacher/{w.model}/{w.task}/k{w.k}_seed{w.seed}.parquet" if w.method == "distill" else [],
        deepspeed=Path(workflow.basedir) / f"config/deepspeed/{config['finetune']['zero']}.json",
    output:
        "results/metrics/finetune/{model}/{task}/{method}/k{k}_seed{seed}.json",
    wildcard_constraints:
        method="head|pattern|lora_head|lora_pattern|distill",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "prompt"),
        settings=as_arg({key: value for key, value in config["finetune"].items() if key not in ("models", "tasks", "methods")}),
        cell=lambda w: as_arg({"task": w.task, "model": w.model, "method": w.method, "k": int(w.k), "seed": int(w.seed)}),
        evals=lambda w: " ".join(f"{split}=results/samples/{w.task}/{split}.parquet" for split in eval_splits(w.task)),
        teacher=lambda w, input: f"--teacher {input.teacher}" if input.teacher else "",
        launcher=finetune_launcher,
        work_dir="results/finetune/{model}/{task}/{method}/k{k}_seed{seed}",
    log:
        "results/logs/finetune/{model}/{task}/{method}/k{k}_seed{seed}.log",
    threads: THREADS
    resources:
        mem_mb=lambda w, attempt: config["models"][w.model]["mem_mb"] * 2 * attempt,
        runtime=lambda w, attempt: 240 * attempt,
        gpu=lambda w: config["models"][w.model]["gpus"],
        tasks=lambda w: 0 if config["models"][w.model]["gpus"] > 1 else 1,
    shell:
        JOB_ENV + " {params.launcher} finetune --model-dir {input.model} --task {wildcards.task} --task-config {params.task}"
        " --train {input.train} --eval {params.evals} {params.teacher} --settings {params.settings}"
        " --deepspeed-config {input.deepspeed} --keys {params.cell} --work-dir {params.work_dir}"
        " --out {output} >> {log} 2>&1"
