# Evaluation of the frozen backbones: a linear classifier, VOC07-style SVMs and
# k-nearest neighbours, each for every pretrained model and for a randomly
# initialised reference backbone of the same architecture.


rule linear:
    input:
        backbone="results/convert/{method}/seed{seed}/backbone.pt",
        sidecar="results/convert/{method}/seed{seed}/backbone.pt.json",
        manifest="results/data/eval/manifest.csv",
        images=config["eval_data"]["images"],
        code=code_files("evaluate"),
    output:
        **eval_outputs("linear"),
    log:
        "logs/eval/{method}/seed{seed}/linear.log",
    benchmark:
        "benchmarks/eval/{method}/seed{seed}/linear.tsv"
    wildcard_constraints:
        method=TRAINED_METHOD_PATTERN,
    conda:
        "../envs/cast.yaml"
    threads: eval_threads("linear")
    resources:
        gpu=eval_gpus("linear"),
    params:
        protocol="linear",
        backbone=backbone_file,
        arch=config["pretrain"]["arch"],
        out_dir=folder_of("metrics"),
        options=options(config["linear"]),
    shell:
        "cast linear-eval --protocol {params.protocol} --backbone {params.backbone} --arch {params.arch}"
        " --images {input.images} --manifest {input.manifest} --out_dir {params.out_dir}"
        " --method {wildcards.method} --seed {wildcards.seed} {params.options} 2> {log}"


use rule linear as voc07 with:
    output:
        **eval_outputs("voc07"),
    log:
        "logs/eval/{method}/seed{seed}/voc07.log",
    benchmark:
        "benchmarks/eval/{method}/seed{seed}/voc07.tsv"
    threads: eval_threads("voc07")
    resources:
        gpu=eval_gpus("voc07"),
    params:
        protocol="voc07",
        backbone=backbone_file,
        arch=config["pretrain"]["arch"],
        out_dir=folder_of("metrics"),
        options=options(config["voc07"]),


use rule linear as knn with:
    output:
        **eval_outputs("knn"),
    log:
        "logs/eval/{method}/seed{seed}/knn.log",
    benchmark:
        "benchmarks/eval/{method}/seed{seed}/knn.tsv"
    threads: eval_threads("knn")
    resources:
        gpu=eval_gpus("knn"),
    params:
        protocol="knn",
        backbone=backbone_file,
        arch=config["pretrain"]["arch"],
        out_dir=folder_of("metrics"),
        options=options(config["knn"]),


use rule linear as linear_random with:
    input:
        manifest="results/data/eval/manifest.csv",
        images=config["eval_data"]["images"],
        code=code_files("evaluate"),
    wildcard_constraints:
        method=REFERENCE,
    params:
        protocol="linear",
        backbone=REFERENCE,
        arch=config["pretrain"]["arch"],
        out_dir=folder_of("metrics"),
        options=options(config["linear"]),


use rule voc07 as voc07_random with:
    input:
        manifest="results/data/eval/manifest.csv",
        images=config["eval_data"]["images"],
        code=code_files("evaluate"),
    wildcard_constraints:
        method=REFERENCE,
    params:
        protocol="voc07",
        backbone=REFERENCE,
        arch=config["pretrain"]["arch"],
        out_dir=folder_of("metrics"),
        options=options(config["voc07"]),


use rule knn as knn_random with:
    input:
        manifest="results/data/eval/manifest.csv",
        images=config["eval_data"]["images"],
        code=code_files("evaluate"),
    wildcard_constraints:
        method=REFERENCE,
    params:
        protocol="knn",
        backbone=REFERENCE,
        arch=config["pretrain"]["arch"],
        out_dir=folder_of("metrics"),
        options=options(config["knn"]),
