# In-context learning: one job per (model, task, shots, seed) scores every pattern of the task on the test and
# out-of-domain samples, with demonstrations from the seed's pool. Zero-shot prompts do not depend on the seed:
# they run once, with the first seed.


rule icl:
    input:
        model=model_folder,
        demos=icl_demos,
        evals=task_eval_samples,
    output:
        layout.METRICS["icl"],
    log:
        layout.log("icl"),
    benchmark:
        layout.benchmark("icl")
    wildcard_constraints:
        shots=r"\d+",
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **model_resources(),
        runtime=240,
    params:
        task=task_prompting,
        settings=icl_settings,
        cell=cell_keys,
        demos=input_option("demos", "--train"),
        evals=eval_sample_arg,
    shell:
        offline(
            "lmadapt icl --model-dir {input.model} --task {wildcards.task} --task-config {params.task} {params.demos}"
            " --eval {params.evals} --settings {params.settings} --keys {params.cell} --out {output} > {log} 2>&1"
        )
