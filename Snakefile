# Snakemake workflow of the CAST reproduction. Every rule runs one `cast`
# command, and dvc.yaml describes the same stages for DVC.
#
#   snakemake --profile workflow/profiles/default                  # the default run
#   snakemake --profile workflow/profiles/slurm --configfile params/paper.yaml

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "params.yaml"


validate(config, "workflow/schemas/params.schema.yaml")


include: "workflow/rules/common.smk"


check_config()


wildcard_constraints:
    seed=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        table_files(),
