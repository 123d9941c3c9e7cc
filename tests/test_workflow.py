"""Tests of the Snakemake workflow and the DVC pipeline: same graph, valid parameters, end-to-end runs.

Every test works on a copy of the workflow files in a temporary folder, so the
repository's own results/, .snakemake/ and DVC state stay untouched. The
end-to-end tests (marked slow, at the end) run the whole pipeline on a few
sample images with one epoch and tiny images, once through Snakemake and once
through DVC.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCHEMA = REPO / "workflow" / "schemas" / "params.schema.yaml"
COPIED = ["Snakefile", "dvc.yaml", "params.yaml", ".dvcignore", "workflow", "cast", "params"]
DVC_PARSING = {"bool": "boolean_optional", "list": "nargs"}
# Outputs that only DVC declares: the resume state, which must survive a rerun
# (persist) and which Snakemake would delete before rerunning the job.
DVC_ONLY_OUTPUT = re.compile(r"^results/pretrain/[^/]+/seed\d+/checkpoints$")
# The command-line groups of params.yaml and the command that takes them.
GROUP_COMMANDS = {
    "verify": ("verify-data", ["--images", "i", "--manifest", "m", "--rejected", "r", "--summary", "s"]),
    "saliency": ("estimate-saliency", ["--images", "i", "--manifest", "m", "--masks", "k", "--summary", "s"]),
    "masks": ("check-masks", ["--images", "i", "--manifest", "m", "--masks", "k", "--pairs", "p", "--rejected", "r", "--summary", "s"]),
    "pretrain": ("pretrain", ["--images", "i", "--masks", "k", "--pairs", "p", "--method", "cast", "--out_dir", "o"]),
    "linear": ("linear-eval", ["--protocol", "linear", "--backbone", "random", "--out_dir", "o"]),
    "voc07": ("linear-eval", ["--protocol", "voc07", "--backbone", "random", "--out_dir", "o"]),
    "knn": ("linear-eval", ["--protocol", "knn", "--backbone", "random", "--out_dir", "o"]),
    "tables": ("tables", ["--eval_metrics", "e", "--pretrain_dirs", "p", "--paper_results", "c", "--images", "i",
                          "--masks", "k", "--pairs", "p", "--out_dir", "o", "--methods", "moco", "--seeds", "0"]),
}


# -- helpers ------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One stage instance: its name (rule or DVC stage), command tokens and output paths."""

    name: str
    command: tuple[str, ...]
    outputs: frozenset[str]


def load_params(path: Path = REPO / "params.yaml") -> dict:
    with open(path, encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def write_params(project: Path, params: dict) -> None:
    with open(project / "params.yaml", "w", encoding="utf-8") as stream:
        yaml.safe_dump(params, stream, sort_keys=False)


def make_project(root: Path) -> Path:
    """Copy the workflow files and the cast package into ``root`` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=ignore)
        else:
            shutil.copy2(source, root / name)
    return root


def environment(project: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # The copied package, not the installed one, so DVC's code hashes match the code that runs.
    env["PYTHONPATH"] = str(project)
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.invalid"
    return env


def log_tails(project: Path) -> str:
    tails = []
    for log in sorted((project / "logs").rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        tails.append(f"--- {log.relative_to(project)}\n" + "\n".join(lines))
    return "\n".join(tails)


def run(project: Path, *command: str, timeout: int = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=project, env=environment(project), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr)[-6000:]
        pytest.fail(f"{shlex.join(command)} exited with {result.returncode}:\n{output}\n{log_tails(project)}")
    return result


def init_dvc(project: Path) -> None:
    """Make ``project`` a git and DVC repository with this project's DVC settings, and commit it."""
    config = (REPO / ".dvc" / "config").read_text()
    run(project, "git", "init", "-q")
    run(project, "dvc", "init", "-q")
    (project / ".dvc" / "config").write_text(config)
    # The project's own .gitignore lets git version the uncached metrics and plot files.
    shutil.copy(REPO / ".gitignore", project / ".gitignore")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-q", "-m", "test project")


def parse_dry_run(output: str) -> list[Job]:
    """Return the jobs of ``snakemake --dry-run --printshellcmds`` output (without the target rule ``all``)."""
    jobs = []
    blocks = re.split(r"^(?:local)?rule (\w+):\n", output, flags=re.MULTILINE)
    for name, body in zip(blocks[1::2], blocks[2::2]):
        if name == "all":
            continue
        outputs = re.search(r"^    output: (.*)$", body, flags=re.MULTILINE)
        wildcards = re.search(r"^    wildcards: (.*)$", body, flags=re.MULTILINE)
        command = re.search(r"^Shell command: (.*)$", body, flags=re.MULTILINE)
        assert outputs and command, f"unexpected dry-run block of rule {name}:\n{body}"
        label = name if wildcards is None else f"{name}[{wildcards.group(1)}]"
        jobs.append(Job(label, snakemake_command(command.group(1)), frozenset(outputs.group(1).split(", "))))
    return jobs


def snakemake_command(text: str) -> tuple[str, ...]:
    """Return a rule's command tokens without the log redirection that only Snakemake adds."""
    tokens = shlex.split(text)
    assert tokens[-2] == "2>", f"command does not end with '2> logs/...': {text}"
    assert tokens[-1].startswith("logs/"), f"command does not end with '2> logs/...': {text}"
    return tuple(tokens[:-2])


def snakemake_jobs(project: Path, *arguments: str) -> list[Job]:
    result = run(project, "snakemake", "--dry-run", "--printshellcmds", "--cores", "2", *arguments)
    return parse_dry_run(result.stdout + result.stderr)


def dvc_jobs(project: Path) -> list[Job]:
    """Return DVC's resolved stages, read in a separate process through DVC's Python API."""
    script = (
        "import json\n"
        "from dvc.repo import Repo\n"
        "with Repo('.') as repo:\n"
        "    print(json.dumps([{'name': s.addressing, 'cmd': s.cmd,"
        " 'outs': [str(o.def_path) for o in s.outs],"
        " 'deps': [str(d.def_path) for d in s.deps]} for s in repo.index.stages]))\n"
    )
    stages = json.loads(run(project, sys.executable, "-c", script).stdout)
    return [Job(stage["name"], tuple(shlex.split(stage["cmd"])), frozenset(stage["outs"])) for stage in stages]


def dvc_stage_deps(project: Path) -> dict[str, list[str]]:
    script = (
        "import json\n"
        "from dvc.repo import Repo\n"
        "with Repo('.') as repo:\n"
        "    print(json.dumps({s.addressing: [str(d.def_path) for d in s.deps] for s in repo.index.stages}))\n"
    )
    return json.loads(run(project, sys.executable, "-c", script).stdout)


def base_name(name: str) -> str:
    return name.split("[")[0].split("@")[0]


def match_jobs(snakemake: list[Job], dvc: list[Job]) -> list[tuple[Job, Job]]:
    """Pair every Snakemake job with the DVC stage of the same outputs; fail on any unpaired one."""
    by_outputs = {job.outputs - {o for o in job.outputs if DVC_ONLY_OUTPUT.match(o)}: job for job in dvc}
    pairs = []
    for job in snakemake:
        assert job.outputs in by_outputs, f"no DVC stage writes exactly {sorted(job.outputs)} (Snakemake job {job.name})"
        pairs.append((job, by_outputs.pop(job.outputs)))
    assert not by_outputs, f"DVC stages without a Snakemake job: {[job.name for job in by_outputs.values()]}"
    return pairs


def options_string(group: dict) -> str:
    from dvc.parsing.interpolate import to_str

    return to_str(group, config=DVC_PARSING)


@pytest.fixture(scope="module")
def graph_project(tmp_path_factory) -> Path:
    project = make_project(tmp_path_factory.mktemp("graph") / "project")
    # The graph tests only read the sample, so a link to it is enough.
    (project / "data").symlink_to(REPO / "data", target_is_directory=True)
    init_dvc(project)
    return project


# -- parameters ---------------------------------------------------------------


def validation_error(params: dict) -> str:
    """Return the message of Snakemake's schema validation of ``params``, or '' when they are valid."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(params, str(SCHEMA), set_default=False)
    except WorkflowError as error:
        return str(error)
    return ""


@pytest.mark.parametrize("path", ["params.yaml", "params/paper.yaml"])
def test_params_files_are_valid(path):
    assert validation_error(load_params(REPO / path)) == ""


def test_paper_file_sets_every_key():
    # Snakemake merges --configfile over params.yaml (seen with snakemake 9.27),
    # so a key missing in the paper's file would silently keep the default value.
    default, paper = load_params(), load_params(REPO / "params" / "paper.yaml")
    assert set(paper) == set(default)
    for group in default:
        missing = set(default[group]) - set(paper[group])
        assert not missing, f"params/paper.yaml group {group} lacks {sorted(missing)}"


@pytest.mark.parametrize(
    ("group", "key", "value", "expected"),
    [
        ("pretrain", "epochs", "ten", r"'ten' is not of type 'integer'"),
        ("pretrain", "mlp", "yes", r"'yes' is not of type 'boolean'"),
        ("experiment", "methods", ["moco", "simclr"], r"'simclr' is not one of \['moco', 'cast'\]"),
        ("linear", "lrate", 0.1, r"Additional properties are not allowed \('lrate' was unexpected\)"),
        ("pretrain", "schedule", "linear", r"'linear' is not one of \['cosine', 'step'\]"),
        ("data", "masks", "my masks", r"does not match"),
    ],
)
def test_invalid_params_name_the_key(group, key, value, expected):
    params = load_params()
    params[group][key] = value
    message = validation_error(params)
    assert re.search(expected, message), message
    # The message shows where the value sits, so the person can find the key.
    assert f"['{group}']" in message, message


def test_missing_group_is_reported():
    params = load_params()
    del params["knn"]
    assert "'knn' is a required property" in validation_error(params)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({("experiment", "methods"): ["moco", "byol"]}, "'byol' is not one of ['moco', 'cast']"),
        ({("pretrain", "mask_threshold"): 100}, "masks.threshold (128) and pretrain.mask_threshold (100) differ"),
        (
            {("linear", "epochs"): 20, ("linear", "milestones"): [18, 24]},
            "linear.milestones [18, 24] must lie between 1 and linear.epochs - 1 = 19",
        ),
    ],
    ids=["unknown-method", "unequal-thresholds", "milestones-past-epochs"],
)
def test_snakemake_rejects_invalid_params(tmp_path, changes, expected):
    project = make_project(tmp_path / "project")
    (project / "data").symlink_to(REPO / "data", target_is_directory=True)
    params = load_params()
    for (group, key), value in changes.items():
        params[group][key] = value
    write_params(project, params)
    result = run(project, "snakemake", "--dry-run", "--cores", "1", check=False)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr


@pytest.mark.parametrize("group", sorted(GROUP_COMMANDS))
def test_params_group_parses_as_command_options(group):
    """Each group, written as DVC writes it, is accepted by its command and gives back the same values."""
    from cast import cli

    command, required = GROUP_COMMANDS[group]
    for path in ("params.yaml", "params/paper.yaml"):
        values = load_params(REPO / path)[group]
        parser = cli.build_parser(command)
        args = parser.parse_args(required + shlex.split(options_string(values)))
        for key, value in values.items():
            parsed = getattr(args, key)
            if isinstance(value, list):
                parsed = list(parsed)
            assert parsed == value or str(parsed) == str(value), f"{path}: {group}.{key} = {value!r} parsed as {parsed!r}"


# -- the two graphs -----------------------------------------------------------


def test_snakemake_and_dvc_run_the_same_commands(graph_project):
    snakemake = snakemake_jobs(graph_project, "--forceall")
    dvc = dvc_jobs(graph_project)
    assert len(snakemake) == len(dvc) == 18

    for smk_job, dvc_job in match_jobs(snakemake, dvc):
        assert base_name(smk_job.name) == base_name(dvc_job.name), f"{smk_job.name} writes the outputs of DVC stage {dvc_job.name}"
        assert smk_job.command == dvc_job.command, f"{smk_job.name} / {dvc_job.name}:\n{shlex.join(smk_job.command)}\n{shlex.join(dvc_job.command)}"


def test_graphs_agree_with_several_seeds(graph_project):
    params = load_params()
    params["experiment"]["seeds"] = [0, 3]
    params["experiment"]["methods"] = ["cast"]
    params["pretrain"]["scale"] = [0.3, 0.9]
    params["linear"]["cached_features"] = False
    write_params(graph_project, params)
    try:
        snakemake = snakemake_jobs(graph_project, "--forceall")
        dvc = dvc_jobs(graph_project)
    finally:
        shutil.copy2(REPO / "params.yaml", graph_project / "params.yaml")
    # 4 data stages, then per seed: pretrain, convert, 3 evaluations, 3 reference evaluations; and tables.
    assert len(snakemake) == len(dvc) == 4 + 2 * 8 + 1
    for smk_job, dvc_job in match_jobs(snakemake, dvc):
        assert smk_job.command == dvc_job.command
    pretrain = [job for job in snakemake if job.name.startswith("pretrain")]
    assert {job.command[job.command.index("--seed") + 1] for job in pretrain} == {"0", "3"}
    assert "--no-cached_features" in next(job for job in snakemake if job.name.startswith("linear[")).command


def test_code_dependencies_agree(graph_project):
    dvc_deps = dvc_stage_deps(graph_project)
    snakemake = run(graph_project, "snakemake", "--dry-run", "--forceall", "--cores", "1").stdout
    blocks = re.split(r"^(?:local)?rule (\w+):\n", snakemake, flags=re.MULTILINE)
    inputs = {name: re.search(r"^    input: (.*)$", body, flags=re.MULTILINE).group(1).split(", ")
              for name, body in zip(blocks[1::2], blocks[2::2]) if name != "all"}
    for stage, deps in dvc_deps.items():
        expected = set()
        for dep in deps:
            if dep.startswith("cast/"):
                path = graph_project / dep
                expected |= {str(p.relative_to(graph_project)) for p in path.rglob("*.py")} if path.is_dir() else {dep}
        code = {item for item in inputs[base_name(stage)] if item.startswith("cast/")}
        assert code == expected, f"{stage}: Snakemake code inputs differ from DVC deps by {sorted(code ^ expected)}"


# Each stage and the modules its command imports; `cast tables` imports the
# figure code and the method library only when it draws the figures.
STAGE_MODULES = {
    "verify_train": ["cast.data.verify"],
    "estimate_saliency": ["cast.data.saliency"],
    "check_masks": ["cast.data.masks"],
    "pretrain@moco-0": ["cast.train.pretrain"],
    "convert@moco-0": ["cast.evaluate.convert"],
    "linear@moco-0": ["cast.evaluate.cli"],
    "tables": ["cast.report.tables", "cast.report.figures", "cast.method.moco", "cast.method.gradcam",
               "cast.method.transforms", "cast.train.checkpoint"],
}


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_code_dependencies_cover_imports(graph_project, stage):
    """Every cast module that a stage's command loads is a DVC dependency, apart from the shared command-line plumbing."""
    plumbing = {"cast", "cast.cli", "cast.io", "cast.options", "cast.errors"}
    script = "import importlib, sys\n"
    script += "".join(f"importlib.import_module({module!r})\n" for module in STAGE_MODULES[stage])
    script += "print('\\n'.join(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('cast'))))\n"
    files = [Path(line) for line in run(graph_project, sys.executable, "-c", script).stdout.split()]
    deps = [dep for dep in dvc_stage_deps(graph_project)[stage] if dep.startswith("cast/")]
    for file in files:
        relative = file.resolve().relative_to(graph_project.resolve())
        name = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        if name in plumbing:
            continue
        covered = any(str(relative) == dep or str(relative).startswith(dep + "/") for dep in deps)
        assert covered, f"stage {stage} runs {relative}, which is not among its deps {deps}"


def test_dvc_params_cover_interpolated_values():
    """Each ${group} or ${group.key} in a command is a tracked parameter, unless it names a path dependency."""
    with open(REPO / "dvc.yaml", encoding="utf-8") as stream:
        stages = yaml.safe_load(stream)["stages"]
    for name, stage in stages.items():
        tracked = set(stage.get("params", []))
        deps = set(stage.get("deps", []))
        for reference in re.findall(r"\$\{([^}]+)\}", stage["cmd"]):
            if reference.startswith("item."):
                continue
            group = reference.split(".")[0]
            assert reference in tracked or group in tracked or f"${{{reference}}}" in deps, f"{name}: ${{{reference}}} is neither a param nor a dep"


def test_snakemake_lint_and_format(graph_project):
    lint = run(graph_project, "snakemake", "--lint", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    files = ["Snakefile", *sorted(str(path.relative_to(REPO)) for path in (REPO / "workflow" / "rules").glob("*.smk"))]
    formatting = subprocess.run([str(BIN / "snakefmt"), "--check", *files], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert formatting.returncode == 0, formatting.stdout + formatting.stderr


def test_user_masks_skip_estimation(graph_project, tmp_path):
    masks = tmp_path / "my_masks"
    masks.mkdir()
    params = load_params()
    params["data"]["masks"] = str(masks)
    write_params(graph_project, params)
    try:
        jobs = snakemake_jobs(graph_project, "--forceall")
    finally:
        shutil.copy2(REPO / "params.yaml", graph_project / "params.yaml")
    names = {base_name(job.name) for job in jobs}
    assert "estimate_saliency" not in names
    check = next(job for job in jobs if job.name == "check_masks")
    assert check.command[check.command.index("--masks") + 1] == str(masks)


# -- end to end ---------------------------------------------------------------


def tiny_params() -> dict:
    """Return params.yaml shrunk to a few images, one epoch and 64-pixel crops."""
    params = load_params()
    for group in ("data", "eval_data"):
        params[group]["images"] = "data/tiny/images"
    for group in ("verify", "saliency", "masks"):
        params[group]["workers"] = 1
    params["pretrain"].update(
        image_size=64, batch_size=8, moco_k=16, moco_dim=32, epochs=1, milestones=[1], nproc_per_node=1, workers=0
    )
    params["linear"].update(epochs=2, milestones=[1], batch_size=16, image_size=64, resize_size=72)
    params["voc07"].update(costs=[1.0], cv_folds=2, batch_size=16, image_size=64, resize_size=72)
    params["knn"].update(k=3, batch_size=16, image_size=64, resize_size=72)
    params["tables"].update(gradcam_images=2)
    return params


def make_tiny_project(root: Path) -> Path:
    """Copy the workflow with four training and two validation sample photos per class."""
    project = make_project(root)
    source = REPO / "data" / "sample" / "images"
    for split, count in (("train", 4), ("val", 2)):
        for label in sorted(path.name for path in (source / split).iterdir() if path.is_dir()):
            target = project / "data" / "tiny" / "images" / split / label
            target.mkdir(parents=True)
            for image in sorted((source / split / label).iterdir())[:count]:
                shutil.copy2(image, target / image.name)
    write_params(project, tiny_params())
    return project


def change_param(project: Path, group: str, key: str, value) -> None:
    params = load_params(project / "params.yaml")
    params[group][key] = value
    write_params(project, params)


def assert_complete_results(project: Path) -> None:
    markdown = (project / "results" / "tables" / "results.md").read_text()
    for method in ("moco", "cast", "random"):
        assert f"| {method} | 0 |" in markdown
    for figure in ("training_curves.png", "gradcam.png"):
        assert (project / "results" / "tables" / "figures" / figure).stat().st_size > 10_000
    for protocol in ("linear", "voc07", "knn"):
        assert (project / "results" / "eval" / "cast" / "seed0" / protocol / "metrics.json").is_file()
    assert (project / "results" / "convert" / "moco" / "seed0" / "detectron2.pkl").is_file()


TRAINED_EVALUATIONS = {f"{protocol}[method=moco, seed=0]" for protocol in ("linear", "voc07", "knn")} | {
    f"{protocol}[method=cast, seed=0]" for protocol in ("linear", "voc07", "knn")
}


@pytest.fixture(scope="module")
def snakemake_run(tmp_path_factory) -> Path:
    project = make_tiny_project(tmp_path_factory.mktemp("snakemake") / "project")
    run(project, "snakemake", "--profile", "workflow/profiles/default", timeout=600)
    return project


@pytest.mark.slow
def test_snakemake_end_to_end(snakemake_run):
    assert_complete_results(snakemake_run)
    assert snakemake_jobs(snakemake_run) == []


@pytest.mark.slow
def test_snakemake_reruns_after_linear_change(snakemake_run):
    change_param(snakemake_run, "linear", "lr", 10.0)
    try:
        names = {job.name for job in snakemake_jobs(snakemake_run)}
    finally:
        change_param(snakemake_run, "linear", "lr", tiny_params()["linear"]["lr"])
    assert names == {"linear[method=moco, seed=0]", "linear[method=cast, seed=0]", "linear_random[method=random, seed=0]", "tables"}


@pytest.mark.slow
def test_snakemake_reruns_after_pretrain_change(snakemake_run):
    change_param(snakemake_run, "pretrain", "lr", 0.01)
    try:
        names = {job.name for job in snakemake_jobs(snakemake_run)}
    finally:
        change_param(snakemake_run, "pretrain", "lr", tiny_params()["pretrain"]["lr"])
    expected = {f"{rule}[method={method}, seed=0]" for rule in ("pretrain", "convert") for method in ("moco", "cast")}
    assert names == expected | TRAINED_EVALUATIONS | {"tables"}


@pytest.fixture(scope="module")
def dvc_run(tmp_path_factory) -> Path:
    project = make_tiny_project(tmp_path_factory.mktemp("dvc") / "project")
    init_dvc(project)
    run(project, "dvc", "repro", timeout=600)
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-q", "-m", "tiny run")
    return project


def dvc_changed_stages(project: Path) -> set[str]:
    status = json.loads(run(project, "dvc", "status", "--json").stdout)
    return set(status)


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"^Running stage '([^']+)':", output, flags=re.MULTILINE))


@pytest.mark.slow
def test_dvc_end_to_end(dvc_run):
    assert_complete_results(dvc_run)
    assert dvc_changed_stages(dvc_run) == set()
    metrics = run(dvc_run, "dvc", "metrics", "show", "--json").stdout
    assert "results/eval/cast/seed0/voc07/metrics.json" in metrics
    assert "contrastive_loss" in metrics
    plots = run(dvc_run, "dvc", "plots", "show", "--json").stdout
    assert "results/pretrain/cast/seed0/plots/metrics/attention_loss.tsv" in plots
    assert "training_curves.png" in plots


@pytest.mark.slow
def test_dvc_reruns_after_linear_change(dvc_run):
    change_param(dvc_run, "linear", "lr", 10.0)
    try:
        assert dvc_changed_stages(dvc_run) == {"linear@moco-0", "linear@cast-0", "linear_random@0"}
    finally:
        change_param(dvc_run, "linear", "lr", tiny_params()["linear"]["lr"])
    assert dvc_changed_stages(dvc_run) == set()

    # The same change as an experiment: only the linear evaluations and the tables run again.
    result = run(dvc_run, "dvc", "exp", "run", "-S", "linear.lr=10.0", "--name", "linear-lr10", timeout=300)
    assert ran_stages(result.stdout) == {"linear@moco-0", "linear@cast-0", "linear_random@0", "tables"}
    experiments = run(dvc_run, "dvc", "exp", "show", "--json").stdout
    assert "linear-lr10" in experiments
    diff = json.loads(run(dvc_run, "dvc", "metrics", "diff", "--json").stdout)
    assert "results/eval/moco/seed0/linear/metrics.json" in diff
    assert "results/pretrain/moco/seed0/metrics.json" not in diff
    # Uncached metrics are versioned by git, which the diff above reads for HEAD.
    tracked = run(dvc_run, "git", "ls-files", "results").stdout.split()
    assert "results/eval/moco/seed0/linear/metrics.json" in tracked
    assert "results/pretrain/cast/seed0/plots/metrics/contrastive_loss.tsv" in tracked
    assert not [path for path in tracked if path.endswith(".pt")]


@pytest.mark.slow
def test_dvc_pretrain_change_reaches_downstream(dvc_run):
    """A pretraining parameter changes the pretrain stages, and DVC's graph places everything after them downstream."""
    change_param(dvc_run, "pretrain", "lr", 0.01)
    try:
        assert dvc_changed_stages(dvc_run) == {"pretrain@moco-0", "pretrain@cast-0"}
        script = (
            "import networkx\n"
            "from dvc.repo import Repo\n"
            "with Repo('.') as repo:\n"
            "    graph = repo.index.graph\n"
            "    starts = [s for s in graph if s.addressing.startswith('pretrain@')]\n"
            "    # DVC's graph points from a stage to the stages it depends on.\n"
            "    later = set().union(*(networkx.ancestors(graph, s) for s in starts))\n"
            "    print(' '.join(sorted(s.addressing for s in later)))\n"
        )
        downstream = set(run(dvc_run, sys.executable, "-c", script).stdout.split())
    finally:
        change_param(dvc_run, "pretrain", "lr", tiny_params()["pretrain"]["lr"])
    expected = {f"{stage}@{method}-0" for stage in ("convert", "linear", "voc07", "knn") for method in ("moco", "cast")}
    assert downstream == expected | {"tables"}
