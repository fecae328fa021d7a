# Models: prepared once into resources/models/{model} (login node: hub downloads need the internet; a GGUF file
# is dequantised and saved plain so that every later job loads it in about a second).


rule fetch_model:
    output:
        directory("resources/models/{model}"),
    params:
        model=lambda w: as_arg(config["models"][w.model]),
    log:
        "results/logs/fetch_model/{model}.log",
    localrule: True
    shell:
        "lmadapt fetch-model --name {wildcards.model} --model {params.model} --out {output} > {log} 2>&1"
