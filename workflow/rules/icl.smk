# In-context learning: one job per (model, task, shots, seed) scores every pattern of the task on the test and
# out-of-domain samples, with demonstrations from the seed's pool. Zero-shot prompts do not depend on the seed:
# they run once, with the first seed.


rule icl:
    input:
        unpack(job_inputs("icl")),
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
        **sized("icl", runtime=240),
        gpu=job_gpus("icl"),
    params:
        **job_params("icl"),
        demos=input_option("demos", "--train"),
        run=run_settings("icl"),
    shell:
        offline(
            "lmadapt icl --model-dir {input.model} --task {wildcards.task} --task-config {params.task} {params.demos}"
            " --eval {params.evals} --settings {params.settings} --run-settings {params.run} --keys {params.cell}"
            " --out {output} > {log} 2>&1"
        )
