# Models: prepared once into resources/models/{model} (login node: hub downloads need the internet; weights are
# written as safetensors whatever the source, a GGUF file dequantised, so that every later job loads in seconds).
# Only the model's identity is a param: its gpus, mem_mb or dtype never re-fetch it nor rerun what uses it. The
# folder is never replaced: a changed identity stops the workflow as it loads, naming the folder to remove
# (lmadapt/checks.py), and once made the folder is no job's output (common.smk: unprepared), so --forceall and
# --forcerun leave it, even as root; it is write-protected besides.


rule fetch_model:
    output:
        protected(directory(layout.PREPARED_MODEL)),
    log:
        layout.log("fetch_model"),
    benchmark:
        layout.benchmark("fetch_model")
    wildcard_constraints:
        model=unprepared(layout.PREPARED_MODEL),
    localrule: True
    conda:
        CONDA_ENV
    params:
        **job_params("fetch_model"),
    shell:
        "lmadapt fetch-model --name {wildcards.model} --model {params.model} --out {output} > {log} 2>&1"
