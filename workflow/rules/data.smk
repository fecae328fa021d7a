# Data: fetch hub datasets once (login node), then draw the training, test and out-of-domain samples.


rule fetch_data:
    output:
        "resources/data/{task}/{role}.parquet",
    params:
        source=lambda w: as_arg(source_entry(w.task, w.role)),
    log:
        "results/logs/fetch_data/{task}/{role}.log",
    localrule: True
    shell:
        "lmadapt fetch-data --source {params.source} --out {output} > {log} 2>&1"


rule sample_train:
    input:
        unpack(sample_inputs),
    output:
        "results/samples/{task}/train_k{k}_seed{seed}.parquet",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "data", "n_test"),
        inputs=lambda w, input: " ".join(f"{role}={path}" for role, path in input.items()),
        test_seed=config["test_seed"],
    log:
        "results/logs/sample/{task}/train_k{k}_seed{seed}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "lmadapt sample --task {wildcards.task} --task-config {params.task} --input {params.inputs}"
        " --split train --k {wildcards.k} --seed {wildcards.seed} --test-seed {params.test_seed}"
        " --out {output} > {log} 2>&1"


rule sample_test:
    input:
        unpack(sample_inputs),
    output:
        "results/samples/{task}/test.parquet",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "data", "n_test"),
        inputs=lambda w, input: " ".join(f"{role}={path}" for role, path in input.items()),
        test_seed=config["test_seed"],
    log:
        "results/logs/sample/{task}/test.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "lmadapt sample --task {wildcards.task} --task-config {params.task} --input {params.inputs}"
        " --split test --test-seed {params.test_seed} --out {output} > {log} 2>&1"


rule sample_ood:
    input:
        lambda w: source_file(w.task, f"ood_{w.name}"),
    output:
        "results/samples/{task}/ood_{name}.parquet",
    params:
        task=lambda w: task_slice(w.task, "fields", "labels", "ood"),
        test_seed=config["test_seed"],
    log:
        "results/logs/sample/{task}/ood_{name}.log",
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "lmadapt sample --task {wildcards.task} --task-config {params.task} --input ood:{wildcards.name}={input}"
        " --split ood:{wildcards.name} --test-seed {params.test_seed} --out {output} > {log} 2>&1"
