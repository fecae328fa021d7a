# Data: fetch hub datasets once (login node; protected and never replaced, as models are), then draw the
# training samples, the demonstration pools, the test sample and the out-of-domain sets (one rule; the sample's
# name says which).


rule fetch_data:
    output:
        protected(layout.DATASET),
    log:
        layout.log("fetch_data"),
    benchmark:
        layout.benchmark("fetch_data")
    wildcard_constraints:
        task=unprepared(layout.DATASET),
    localrule: True
    conda:
        CONDA_ENV
    params:
        **job_params("fetch_data"),
    shell:
        "lmadapt fetch-data --source {params.source} --out {output} > {log} 2>&1"


rule sample:
    input:
        unpack(job_inputs("sample")),
    output:
        layout.SAMPLE,
    log:
        layout.log("sample"),
    benchmark:
        layout.benchmark("sample")
    priority: 50  # cheap, and the preflight waits for every sample: draw them before the model jobs
    conda:
        CONDA_ENV
    resources:
        **sized("sample", runtime=10, mem_mb=4000),
    params:
        **job_params("sample"),
        inputs=sample_roles,
    shell:
        "lmadapt sample --task {wildcards.task} --task-config {params.task} --input {params.inputs}"
        " {params.split} --test-seed {params.test_seed} --out {output} > {log} 2>&1"
