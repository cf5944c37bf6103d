"""A params edit reruns the same jobs in Snakemake and in DVC: those whose stage reads a key whose
VALUE changed (and, in Snakemake's plan, what depends on their outputs); an edit of a key that a
later layer overrides reruns nothing.

One key of each layer (base, dataset, variant, and the overrides file params.yaml) is edited.
A tiny copy of the project (the demo config with a second variant) is marked as built in both tools
without running anything: every output is created as an empty file, `snakemake --touch` records the
jobs (their params included) and `dvc commit` writes dvc.lock.  Then one key of each layer is
edited and the real `snakemake -n` and `dvc status` are asked what they would rerun.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fian_pipeline import registry as R
from fian_pipeline.render import load_plan, render_dvc

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}

DOWNSTREAM_OF_TRAIN = {"evaluate@synthetic-{v}-test", "plots@synthetic-{v}-test", "tables"}


def _run(proj: Path, *cmd: str) -> str:
    proc = subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]], cwd=proj, env=ENV, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("rerun"))


def build(proj: Path) -> Path:
    """The tiny project in ``proj``, marked as built in both tools."""
    for f in ("Snakefile", ".dvcignore"):
        shutil.copy(ROOT / f, proj / f)
    for d in ("workflow", "params"):
        shutil.copytree(ROOT / d, proj / d)
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    conf = proj / "workflow/config/default.yaml"
    config = yaml.safe_load(conf.read_text())
    config["datasets"]["synthetic"]["variants"] = ["fian", "stride4"]
    conf.write_text(yaml.safe_dump(config))
    plan = load_plan("workflow/config/default.yaml", proj)
    (proj / "dvc.yaml").write_text(render_dvc(plan, "workflow/config/default.yaml", proj))
    for inst in R.instances(plan):  # every output, empty (nothing runs)
        for out in inst.stage.outputs:
            path = proj / R.fill(out.path, inst.wildcards)
            if out.kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
                (path / "x").write_text(inst.id)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}" if path.suffix == ".json" else inst.id)
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    _run(proj, "dvc", "init", "-q")
    # as the demo does: Snakemake records the jobs (and writes its timestamps into directory outputs),
    # dvc commit records them in dvc.lock (re-linking them from its cache: new mtimes), then touch again
    _run(proj, "snakemake", "--touch", "--forceall", "--cores", "1", "--quiet")
    _run(proj, "dvc", "commit", "--force", "--quiet")
    _run(proj, "snakemake", "--touch", "--forceall", "--cores", "1", "--quiet")
    assert "Nothing to be done" in _run(proj, "snakemake", "-n", "--cores", "1")
    assert "up to date" in _run(proj, "dvc", "status")
    return proj


def _snakemake_plan(proj: Path) -> tuple[set[str], set[str]]:
    """(jobs whose reason is changed params, every planned job) of `snakemake -n`."""
    out = _run(proj, "snakemake", "-n", "--cores", "1")
    direct, planned = set(), set()
    for block in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", out):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        wc = re.search(r"^    wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        stage = R.stage(m.group(1))
        key = "-".join(wildcards[w] for w in stage.wildcards)
        job = f"{stage.name}@{key}" if key else stage.name
        planned.add(job)
        reason = re.search(r"^    reason: (.*)$", block, re.M)
        if reason and "Params have changed" in reason.group(1):
            direct.add(job)
    return direct, planned


def _dvc_changed(proj: Path) -> set[str]:
    return set(json.loads(_run(proj, "dvc", "status", "--json")))


def _edit(path: Path, dotted: str, value: object) -> str:
    old = path.read_text()
    data = yaml.safe_load(old) or {}
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    path.write_text(yaml.safe_dump(data))
    return old


def _train_and_after(v: str) -> set[str]:
    # the demo config's `shuffle: true`: FIAN's checkpoint also feeds the video-shuffle check (Table 7)
    shuffle = {"shuffle@synthetic-fian-test"} if v == R.REFERENCE else set()
    return {f"train@synthetic-{v}", *(j.format(v=v) for j in DOWNSTREAM_OF_TRAIN)} | shuffle


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layer", "key", "value", "direct", "planned"),
    [
        # base layer: a key only base.yaml sets; read by train only
        ("base.yaml", "train.grad_clip", 1.0, {"train@synthetic-fian", "train@synthetic-stride4"},
         _train_and_after("fian") | _train_and_after("stride4")),
        # base layer, overridden by the dataset file (the demo's epochs live there): nothing changes
        ("base.yaml", "train.epochs", 99, set(), set()),
        # dataset layer: the learning rate of the demo
        ("datasets/synthetic.yaml", "train.lr", 0.002, {"train@synthetic-fian", "train@synthetic-stride4"},
         _train_and_after("fian") | _train_and_after("stride4")),
        # dataset layer: a generator setting; read by the stages that read the whole dataset section
        ("datasets/synthetic.yaml", "dataset.synthetic.noise", 0.5,
         {"generate@synthetic", "annotations@synthetic", "features@synthetic"},
         {"generate@synthetic", "annotations@synthetic", "features@synthetic", "text_fallback@synthetic",
          "prepare@synthetic", "baseline@synthetic-test"} | _train_and_after("fian") | _train_and_after("stride4")),
        # the overrides layer (params.yaml, every key at null in git): a key set there wins for every
        # dataset and variant; train.epochs (the dataset file's 30 -> 2) reruns both trainings
        ("../params.yaml", "train.epochs", 2, {"train@synthetic-fian", "train@synthetic-stride4"},
         _train_and_after("fian") | _train_and_after("stride4")),
        # variant layer: one variant's stride; train and evaluate of that variant read model.*
        ("variants/stride4.yaml", "model.stride_ratio", 0.5,
         {"train@synthetic-stride4", "evaluate@synthetic-stride4-test"}, _train_and_after("stride4")),
    ],
)  # fmt: skip
def test_a_params_edit_reruns_the_same_jobs_in_both_tools(
    built: Path, layer: str, key: str, value: object, direct: set[str], planned: set[str]
) -> None:
    path = built / "params" / layer
    old = _edit(path, key, value)
    try:
        smk_direct, smk_planned = _snakemake_plan(built)
        dvc = _dvc_changed(built)
    finally:
        path.write_text(old)
    assert dvc == direct, f"dvc status after {layer}: {key}"
    assert smk_planned == planned, f"snakemake -n (all jobs) after {layer}: {key}"
    # Snakemake gives one reason per job: a reader of the key downstream of another reader says
    # "updated input files" instead (evaluate after train); the first readers say "params changed"
    assert smk_direct <= direct and bool(smk_direct) == bool(direct), smk_direct


@pytest.mark.slow
def test_restored_values_rerun_nothing(built: Path) -> None:
    """Touching a params file (new mtime, same values) reruns nothing in Snakemake."""
    (built / "params/base.yaml").touch()
    assert _snakemake_plan(built) == (set(), set())
    assert _dvc_changed(built) == set()
