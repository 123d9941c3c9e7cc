# Pretraining with MoCo or CAST, and export of the query backbone.


rule pretrain:
    input:
        images=config["data"]["images"],
        masks=config["data"]["masks"],
        pairs="results/masks/pairs.csv",
        code=code_files("pretrain"),
    output:
        # The resume state in checkpoints/ is not an output: Snakemake would
        # delete it before a rerun, and an interrupted run resumes from it.
        final="results/pretrain/{method}/seed{seed}/final.pt",
        metrics="results/pretrain/{method}/seed{seed}/metrics.json",
        plots=directory("results/pretrain/{method}/seed{seed}/plots"),
    log:
        "logs/pretrain/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/pretrain/{method}/seed{seed}.tsv"
    conda:
        "../envs/cast.yaml"
    threads: pretrain_threads()
    resources:
        gpu=pretrain_gpus(),
        nodes=config["pretrain"]["nnodes"],
        # Launcher that starts `cast pretrain` once per machine, for example
        # `srun --ntasks-per-node=1` (set with --set-resources pretrain:mpi=...).
        # Empty on one machine, where `cast pretrain` starts its workers itself.
        # Inside a SLURM allocation `cast pretrain` derives the rendezvous
        # endpoint from the job's first node; elsewhere set rdzv_endpoint.
        mpi="",
    params:
        split=config["data"]["train_split"],
        out_dir=folder_of("final"),
        options=options(config["pretrain"]),
    shell:
        "{resources.mpi} cast pretrain --images {input.images} --masks {input.masks}"
        " --pairs {input.pairs} --split {params.split} --method {wildcards.method}"
        " --seed {wildcards.seed} --out_dir {params.out_dir} {params.options} 2> {log}"


rule convert:
    input:
        checkpoint="results/pretrain/{method}/seed{seed}/final.pt",
        code=code_files("convert"),
    output:
        backbone="results/convert/{method}/seed{seed}/backbone.pt",
        sidecar="results/convert/{method}/seed{seed}/backbone.pt.json",
        detectron2="results/convert/{method}/seed{seed}/detectron2.pkl",
    log:
        "logs/convert/{method}/seed{seed}.log",
    conda:
        "../envs/cast.yaml"
    shell:
        "cast convert --checkpoint {input.checkpoint} --backbone {output.backbone}"
        " --detectron2 {output.detectron2} 2> {log}"
