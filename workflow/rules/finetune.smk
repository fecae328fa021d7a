# Fine-tuning: the prompted teacher's label distribution (once per training sample, reused by every student),
# then one DeepSpeed job per (model, task, method, k, seed). On a GPU cluster the job asks Slurm for the model's
# GPUs with tasks=0 (one task: the plugin must not start a copy per GPU) and torchrun starts one process per GPU.
# Checkpoints live in results/finetune/... outside the declared outputs, so a restarted job resumes from them.
# A job's params hold its method's settings only: a LoRA setting reruns LoRA jobs, no other.


rule teacher:
    input:
        model=lambda w: model_dir(w.model),
        train="results/samples/{task}/train_k{k}_seed{seed}.parquet",
        demos=lambda w: demonstration_pool_file(w.task, w.seed, TEACHER_SETTINGS["shots"]),
    output:
        "results/teacher/{model}/{task}/k{k}_seed{seed}.parquet",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "prompt"),
        settings=as_arg(TEACHER_SETTINGS),
        demos=lambda w, input: f"--demos {input.demos}" if input.demos else "",
    log:
        "results/logs/teacher/{model}/{task}/k{k}_seed{seed}.log",
    threads: THREADS
    resources:
        **model_resources(),
        runtime=60,
    shell:
        JOB_ENV + " lmadapt teacher --model-dir {input.model} --task {wildcards.task} --task-config {params.task}"
        " --train {input.train} {params.demos} --seed {wildcards.seed} --settings {params.settings} --out {output}"
        " > {log} 2>&1"


rule finetune:
    input:
        model=lambda w: model_dir(w.model),
        train="results/samples/{task}/train_k{k}_seed{seed}.parquet",
        evals=lambda w: eval_samples(w.task),
        teacher=teacher_file,
        deepspeed=Path(workflow.basedir) / f"config/deepspeed/{config['finetune']['zero']}.json",
    output:
        "results/metrics/finetune/{model}/{task}/{method}/k{k}_seed{seed}.json",
    wildcard_constraints:
        method="head|pattern|lora_head|lora_pattern|distill",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "prompt"),
        settings=lambda w: as_arg(finetune_settings(config, w.method)),
        run=run_setting({key: config["finetune"][key] for key in FINETUNE_RUN_SETTINGS}),
        cell=cell_keys,
        evals=lambda w: eval_arg(f"results/samples/{w.task}", w.task),
        teacher=lambda w, input: f"--teacher {input.teacher}" if input.teacher else "",
        launcher=finetune_launcher,
        work_dir="results/finetune/{model}/{task}/{method}/k{k}_seed{seed}",
    log:
        "results/logs/finetune/{model}/{task}/{method}/k{k}_seed{seed}.log",
    threads: THREADS
    resources:
        **model_resources(scale=2, gpus="all"),
        runtime=lambda w, attempt: 240 * attempt,
        tasks=lambda w: 0 if config["models"][w.model]["gpus"] > 1 else 1,
    shell:
        JOB_ENV + " {params.launcher} finetune --model-dir {input.model} --task {wildcards.task} --task-config {params.task}"
        " --train {input.train} --eval {params.evals} {params.teacher} --settings {params.settings}"
        " --run-settings {params.run} --deepspeed-config {input.deepspeed} --keys {params.cell}"
        " --work-dir {params.work_dir} --out {output} >> {log} 2>&1"
