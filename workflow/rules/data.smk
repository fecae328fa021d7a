# Data: fetch hub datasets once (login node; protected and never replaced, as models are), then draw the
# training samples, the demonstration pools, the test sample and the out-of-domain sets (one rule; the sample's
# name says which).


rule fetch_data:
    output:
        protected("resources/data/{task}/{role}.parquet"),
    params:
        source=lambda w: as_arg(dataset_identity(source_entry(w.task, w.role))),
    log:
        "results/logs/fetch_data/{task}/{role}.log",
    localrule: True
    shell:
        "lmadapt fetch-data --source {params.source} --out {output} > {log} 2>&1"


rule sample:
    input:
        unpack(sample_inputs),
    output:
        "results/samples/{task}/{sample}.parquet",
    params:
        task=sample_task,
        split=sample_split,
        inputs=sample_roles,
        test_seed=config["test_seed"],
    log:
        "results/logs/sample/{task}/{sample}.log",
    priority: 50  # cheap, and the preflight waits for every sample: draw them before the model jobs
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=10,
    shell:
        "lmadapt sample --task {wildcards.task} --task-config {params.task} --input {params.inputs}"
        " {params.split} --test-seed {params.test_seed} --out {output} > {log} 2>&1"
