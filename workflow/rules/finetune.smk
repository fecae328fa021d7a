# Fine-tuning: the prompted teacher's label distribution (once per training sample, reused by every student),
# then one DeepSpeed job per (model, task, method, k, seed). On a GPU cluster the job asks Slurm for the model's
# GPUs with tasks=0 (one task: the plugin must not start a copy per GPU) and torchrun starts one process per GPU;
# a model on several nodes asks for them and a task per GPU, and srun starts the processes (lmadapt/jobs.py).
# Checkpoints live in results/finetune/... outside the declared outputs, so a restarted job resumes from them.
# A job's params hold its method's settings only: a LoRA setting reruns LoRA jobs, no other.


rule teacher:
    input:
        unpack(job_inputs("teacher")),
        train=layout.TRAIN_SAMPLE,
    output:
        layout.TEACHER,
    log:
        layout.log("teacher"),
    benchmark:
        layout.benchmark("teacher")
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **sized("teacher", runtime=60),
        gpu=job_gpus("teacher"),
    params:
        **job_params("teacher"),
        demos=input_option("demos", "--demos"),
        run=run_settings("teacher"),
    shell:
        offline(
            "lmadapt teacher --model-dir {input.model} --task {wildcards.task} --task-config {params.task}"
            " --train {input.train} {params.demos} --seed {wildcards.seed} --settings {params.settings}"
            " --run-settings {params.run} --out {output} > {log} 2>&1"
        )


rule finetune:
    input:
        unpack(job_inputs("finetune")),
        train=layout.TRAIN_SAMPLE,
        deepspeed=DEEPSPEED_CONFIG,
    output:
        layout.METRICS["finetune"],
    log:
        layout.log("finetune"),
    benchmark:
        layout.benchmark("finetune")
    wildcard_constraints:
        method=method_pattern(),
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **sized("finetune", runtime=240, scale=2),
        **training_resources("finetune"),
    params:
        **job_params("finetune"),
        run=run_settings("finetune"),
        teacher=input_option("teacher", "--teacher"),
        work_dir=layout.FINETUNE_WORK,
    shell:
        offline(
            "{params.launcher} finetune --model-dir {input.model} --task {wildcards.task} --task-config {params.task}"
            " --train {input.train} --eval {params.evals} {params.teacher} --settings {params.settings}"
            " --run-settings {params.run} --deepspeed-config {input.deepspeed} --keys {params.cell}"
            " --work-dir {params.work_dir} --out {output} >> {log} 2>&1"
        )
