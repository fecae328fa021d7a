# In-context learning: one job per (model, task, shots, seed) scores every pattern of the task on the test and
# out-of-domain samples, with demonstrations from the seed's pool. Zero-shot prompts do not depend on the seed:
# they run once, with the first seed.


rule icl:
    input:
        model=lambda w: model_dir(w.model),
        demos=lambda w: demonstration_pool_file(w.task, w.seed, w.shots),
        evals=lambda w: eval_samples(w.task),
    output:
        "results/metrics/icl/{model}/{task}/shots{shots}_seed{seed}.json",
    wildcard_constraints:
        shots=r"\d+",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "prompt"),
        settings=stage_settings("icl", dtype="auto"),
        cell=lambda w: as_arg({"task": w.task, "model": w.model, "k": int(w.shots), "seed": int(w.seed)}),
        demos=lambda w, input: f"--train {input.demos}" if input.demos else "",
        evals=lambda w: eval_arg(f"results/samples/{w.task}", w.task),
    log:
        "results/logs/icl/{model}/{task}/shots{shots}_seed{seed}.log",
    threads: THREADS
    resources:
        **model_resources(),
        runtime=240,
    shell:
        JOB_ENV + " lmadapt icl --model-dir {input.model} --task {wildcards.task} --task-config {params.task} {params.demos}"
        " --eval {params.evals} --settings {params.settings} --keys {params.cell} --out {output} > {log} 2>&1"
