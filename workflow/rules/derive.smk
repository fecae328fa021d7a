# Derived models: each kind's rule trains a model from its base into results/models/{model}, a folder like a
# fetched one that every stage takes by name (common.smk: model_dir). Corpora (instruction sets, prompt texts)
# from the hub are fetched once, as datasets are. A derived model reruns when what it computes changes (its
# settings, its base, its data); its gpus or mem_mb, and checkpoint cadence, never rerun it.


rule fetch_corpus:
    output:
        protected(layout.CORPUS),
    log:
        layout.log("fetch_corpus"),
    benchmark:
        layout.benchmark("fetch_corpus")
    wildcard_constraints:
        corpus=unprepared(layout.CORPUS),
    localrule: True
    conda:
        CONDA_ENV
    params:
        **job_params("fetch_corpus"),
    shell:
        "lmadapt fetch-data --source {params.source} --out {output} > {log} 2>&1"


# Instruction tuning: DeepSpeed on all of the model's GPUs (on one node, torchrun starts a process per GPU; on
# several, srun), as finetune; checkpoints in the work folder let a restarted job resume.
rule instruct:
    input:
        unpack(job_inputs("instruct")),
        deepspeed=DEEPSPEED_CONFIG,
    output:
        model=directory(layout.DERIVED_MODEL),
        metrics=layout.DERIVE_METRICS,
        generations=layout.DERIVE_GENERATIONS,
    log:
        layout.log("instruct"),
    benchmark:
        layout.benchmark("instruct")
    wildcard_constraints:
        model=derived_pattern("instruct"),
    priority: 40  # every job of the derived model waits for it: start it first
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **sized("instruct", runtime=1440, scale=2),
        **training_resources("instruct"),
    params:
        **job_params("instruct"),
        run=run_settings("instruct"),
        data=instruction_sets_arg,
        work_dir=layout.DERIVE_WORK,
    shell:
        offline(
            "{params.launcher} instruct --name {wildcards.model} --base-dir {input.base} --data {params.data}"
            " --corpora {params.corpora} --settings {params.settings} --run-settings {params.run}"
            " --deepspeed-config {input.deepspeed} --work-dir {params.work_dir} --out-model {output.model}"
            " --metrics {output.metrics} --generations {output.generations} >> {log} 2>&1"
        )


# A classifier (e.g. a reward model): method head on a task's training sample, evaluated like a fine-tuning cell.
rule classifier:
    input:
        unpack(job_inputs("classifier")),
        deepspeed=DEEPSPEED_CONFIG,
    output:
        model=directory(layout.DERIVED_MODEL),
        metrics=layout.DERIVE_METRICS,
    log:
        layout.log("classifier"),
    benchmark:
        layout.benchmark("classifier")
    wildcard_constraints:
        model=derived_pattern("classifier"),
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **sized("classifier", runtime=240, scale=2),
        **training_resources("classifier"),
    params:
        **job_params("classifier"),
        run=run_settings("classifier"),
        work_dir=layout.DERIVE_WORK,
    shell:
        offline(
            "{params.launcher} classifier --name {wildcards.model} --model-dir {input.base} {params.task}"
            " --train {input.train} --eval {params.evals} --settings {params.settings} --run-settings {params.run}"
            " --deepspeed-config {input.deepspeed} --keys {params.cell} --work-dir {params.work_dir}"
            " --out-model {output.model} --metrics {output.metrics} >> {log} 2>&1"
        )


# RL against a reward classifier: one process on one GPU (policy, reference and reward model side by side).
rule ppo:
    input:
        unpack(job_inputs("ppo")),
    output:
        model=directory(layout.DERIVED_MODEL),
        metrics=layout.DERIVE_METRICS,
        generations=layout.DERIVE_GENERATIONS,
    log:
        layout.log("ppo"),
    benchmark:
        layout.benchmark("ppo")
    wildcard_constraints:
        model=derived_pattern("ppo"),
    conda:
        CONDA_ENV
    threads: THREADS
    resources:
        **sized("ppo", runtime=1440, scale=3),
        gpu=job_gpus("ppo"),
    params:
        **job_params("ppo"),
    shell:
        offline(
            "lmadapt ppo --name {wildcards.model} --base-dir {input.base} --reward-dir {input.reward}"
            " --prompts {input.prompts} --corpus {params.corpus} --settings {params.settings}"
            " --out-model {output.model} --metrics {output.metrics} --generations {output.generations} > {log} 2>&1"
        )


# The derived models' before/after metrics as one table, for the report.
rule derived_summary:
    input:
        JOBS.inputs("derived_summary", {})["metrics"],
    output:
        report(layout.DERIVE_SUMMARY, caption="../report/derived.rst", category="Derived models"),
    log:
        layout.log("derived_summary"),
    benchmark:
        layout.benchmark("derived_summary")
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "lmadapt derived-summary --metrics {input} --out {output} > {log} 2>&1"
