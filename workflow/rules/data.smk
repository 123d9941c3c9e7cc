# Data stages: check the images, estimate saliency masks, pair images with masks.


rule verify_train:
    input:
        images=config["data"]["images"],
        code=code_files("verify"),
    output:
        manifest="results/data/train/manifest.csv",
        rejected="results/data/train/rejected.csv",
        summary="results/data/train/summary.json",
    log:
        "logs/verify/train.log",
    conda:
        "../envs/cast.yaml"
    threads: worker_threads("verify")
    params:
        splits=split_names("data"),
        options=options(config["verify"]),
    shell:
        "cast verify-data --images {input.images} --splits {params.splits}"
        " --manifest {output.manifest} --rejected {output.rejected} --summary {output.summary}"
        " {params.options} 2> {log}"


use rule verify_train as verify_eval with:
    input:
        images=config["eval_data"]["images"],
        code=code_files("verify"),
    output:
        manifest="results/data/eval/manifest.csv",
        rejected="results/data/eval/rejected.csv",
        summary="results/data/eval/summary.json",
    log:
        "logs/verify/eval.log",
    params:
        splits=split_names("eval_data"),
        options=options(config["verify"]),


rule estimate_saliency:
    input:
        images=config["data"]["images"],
        manifest="results/data/train/manifest.csv",
        code=code_files("saliency"),
    output:
        masks=directory(ESTIMATED_MASKS),
        summary="results/saliency/summary.json",
    log:
        "logs/saliency.log",
    conda:
        "../envs/cast.yaml"
    threads: worker_threads("saliency")
    params:
        options=options(config["saliency"]),
    shell:
        "cast estimate-saliency --images {input.images} --manifest {input.manifest}"
        " --masks {output.masks} --summary {output.summary} {params.options} 2> {log}"


rule check_masks:
    input:
        images=config["data"]["images"],
        manifest="results/data/train/manifest.csv",
        masks=config["data"]["masks"],
        code=code_files("masks"),
    output:
        pairs="results/masks/pairs.csv",
        rejected="results/masks/rejected.csv",
        summary="results/masks/summary.json",
    log:
        "logs/masks.log",
    conda:
        "../envs/cast.yaml"
    threads: worker_threads("masks")
    params:
        layout=config["data"]["mask_layout"],
        options=options(config["masks"]),
    shell:
        "cast check-masks --images {input.images} --manifest {input.manifest} --masks {input.masks}"
        " --mask_layout {params.layout} --pairs {output.pairs} --rejected {output.rejected}"
        " --summary {output.summary} {params.options} 2> {log}"
