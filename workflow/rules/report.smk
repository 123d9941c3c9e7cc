# Result tables and figures from every evaluation and pretraining run.


rule tables:
    input:
        eval_metrics=eval_metric_files(),
        pretrain_metrics=pretrain_files("metrics.json"),
        checkpoints=pretrain_files("final.pt"),
        pairs="results/masks/pairs.csv",
        images=config["data"]["images"],
        masks=config["data"]["masks"],
        paper_results="workflow/paper_results.csv",
        code=code_files("tables"),
    output:
        markdown="results/tables/results.md",
        csv="results/tables/results.csv",
        latex="results/tables/results.tex",
        curves="results/tables/figures/training_curves.png",
        gradcam="results/tables/figures/gradcam.png",
    log:
        "logs/tables.log",
    conda:
        "../envs/cast.yaml"
    params:
        # The folders results/eval and results/pretrain, searched for every run.
        eval_root=results_root("eval_metrics", 4),
        pretrain_root=results_root("pretrain_metrics", 3),
        split=config["data"]["val_split"],
        out_dir=folder_of("markdown"),
        experiment=options(config["experiment"]),
        options=options(config["tables"]),
    shell:
        "cast tables --eval_metrics {params.eval_root} --pretrain_dirs {params.pretrain_root}"
        " --paper_results {input.paper_results} --images {input.images} --masks {input.masks}"
        " --pairs {input.pairs} --split {params.split} --out_dir {params.out_dir}"
        " {params.experiment} {params.options} 2> {log}"
