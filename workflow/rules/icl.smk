# In-context learning: one job per (model, task, shots, seed) scores every pattern of the task on the test and
# out-of-domain samples. Zero-shot prompts do not depend on the seed: they run once, with the first seed.


def icl_train_sample(wildcards):
    """Demonstrations come from the largest training sample of the seed (samples are nested across k)."""
    if int(wildcards.shots) == 0:
        return []
    k = max(config["tasks"][wildcards.task]["k"])
    return f"results/samples/{wildcards.task}/train_k{k}_seed{wildcards.seed}.parquet"


rule icl:
    input:
        model=lambda w: model_dir(w.model),
        train=icl_train_sample,
        evals=lambda w: eval_samples(w.task),
    output:
        "results/metrics/icl/{model}/{task}/shots{shots}_seed{seed}.json",
    wildcard_constraints:
        shots=r"\d+",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "prompt"),
        settings=as_arg({key: value for key, value in config["icl"].items() if key not in ("models", "tasks", "shots")}
                        | {"dtype": "auto"}),
        cell=lambda w: as_arg({"task": w.task, "model": w.model, "k": int(w.shots), "seed": int(w.seed)}),
        train=lambda w, input: f"--train {input.train}" if input.train else "",
        evals=lambda w: " ".join(f"{split}=results/samples/{w.task}/{split}.parquet" for split in eval_splits(w.task)),
    log:
        "results/logs/icl/{model}/{task}/shots{shots}_seed{seed}.log",
    threads: THREADS
    resources:
        mem_mb=lambda w, attempt: config["models"][w.model]["mem_mb"] * attempt,
        runtime=240,
        gpu=lambda w: min(config["models"][w.model]["gpus"], 1),
    shell:
        JOB_ENV + " lmadapt icl --model-dir {input.model} --task {wildcards.task} --task-config {params.task} {params.train}"
        " --eval {params.evals} --settings {params.settings} --keys {params.cell} --out {output} > {log} 2>&1"
