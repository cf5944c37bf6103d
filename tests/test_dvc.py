"""DVC on a dvc.yaml rendered by fian_pipeline.render: a changed param reruns exactly the stages that
read it (and what depends on their outputs); `dvc params diff` and `dvc metrics diff` work.

The stages are registry records (fian_pipeline.registry.Stage) with trivial commands (a tiny module
written into the temp repo) so that the test takes seconds; the rendering is the real one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fian_pipeline import registry as R
from fian_pipeline.render import render_dvc, render_overrides

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

FAKE_STAGE = '''"""A stand-in stage: reads --params layers, writes the keys it reads (+ its input) to --out."""
import argparse, json
from pathlib import Path
import yaml

p = argparse.ArgumentParser()
p.add_argument("--params", nargs="+", required=True)
p.add_argument("--overrides")  # params.yaml: a key at null sets nothing
p.add_argument("--keys", required=True)
p.add_argument("--in", dest="inp")
p.add_argument("--out", required=True)
a = p.parse_args()
merged = {}
for f in [*a.params, *([a.overrides] if a.overrides else [])]:
    for section, values in (yaml.safe_load(open(f)) or {}).items():
        merged.setdefault(section, {}).update({k: v for k, v in (values or {}).items() if v is not None})
read = {k: merged.get(k, {}) for k in a.keys.split(",")}
upstream = json.loads(Path(a.inp).read_text()) if a.inp else {}
score = sum(v for sec in read.values() for v in sec.values()) + upstream.get("score", 0)
Path(a.out).parent.mkdir(parents=True, exist_ok=True)
Path(a.out).write_text(json.dumps({"read": read, "score": score}))
'''

STAGES = (
    R.Stage(
        name="prep", module="stage", package="toystages", phase="data", doc="reads features",
        wildcards=("dataset",), layers=("base", "dataset"), keys=("features",), fixed=("--keys", "features"),
        args=(R.Arg("--out", "out/{dataset}/prep.json", "value"),), outputs=(R.Out("out/{dataset}/prep.json"),),
    ),
    R.Stage(
        name="fit", module="stage", package="toystages", phase="model", doc="reads train",
        wildcards=("dataset", "variant"), layers=("base", "dataset", "variant"), keys=("train",),
        fixed=("--keys", "train"),
        args=(R.Arg("--in", "out/{dataset}/prep.json"), R.Arg("--out", "out/{dataset}/{variant}/model.json", "value")),
        outputs=(R.Out("out/{dataset}/{variant}/model.json"),),
    ),
    R.Stage(
        name="score", module="stage", package="toystages", phase="model", doc="reads eval",
        wildcards=("dataset", "variant"), layers=("base",), keys=("eval",), fixed=("--keys", "eval"),
        args=(
            R.Arg("--in", "out/{dataset}/{variant}/model.json"),
            R.Arg("--out", "out/{dataset}/{variant}/metrics.json", "value"),
        ),
        outputs=(R.Out("out/{dataset}/{variant}/metrics.json", metric=True),),
    ),
)  # fmt: skip


def _run(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
        "DVC_NO_ANALYTICS": "1",
    }  # fmt: skip
    exe = str(BIN / "dvc") if args[0] == "dvc" else args[0]
    proc = subprocess.run([exe, *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _set(path: Path, section: str, key: str, value: object) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "toystages").mkdir()
    (tmp_path / "toystages/__init__.py").write_text("")
    (tmp_path / "toystages/stage.py").write_text(FAKE_STAGE)
    params = tmp_path / "params"
    (params / "datasets").mkdir(parents=True)
    (params / "variants").mkdir()
    (params / "base.yaml").write_text(
        yaml.safe_dump({"features": {"n": 1}, "train": {"epochs": 1, "lr": 1}, "eval": {"k": 5}})
    )
    (params / "datasets/toy.yaml").write_text(yaml.safe_dump({"features": {"n": 2}}))
    (params / "variants/a.yaml").write_text(yaml.safe_dump({"train": {"lr": 2}}))
    (params / "variants/b.yaml").write_text("{}\n")
    (tmp_path / "params.yaml").write_text(render_overrides(ROOT))  # every key at null
    plan = R.Plan(datasets=(R.DatasetPlan("toy", variants=("a", "b")),))
    (tmp_path / "dvc.yaml").write_text(render_dvc(plan, "test", tmp_path, stages=STAGES))
    _run(tmp_path, "git", "init", "-q")
    _run(tmp_path, "dvc", "init", "-q")
    return tmp_path


def test_param_change_reruns_exactly_the_readers(repo: Path) -> None:
    first = _ran(_run(repo, "dvc", "repro"))
    assert first == {"prep@toy", "fit@toy-a", "fit@toy-b", "score@toy-a", "score@toy-b"}
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "first run")
    assert _ran(_run(repo, "dvc", "repro")) == set()  # nothing changed: nothing runs

    # train.epochs in the base layer: read by fit only; score reruns because fit's output changed
    _set(repo / "params/base.yaml", "train", "epochs", 3)
    status = json.loads(_run(repo, "dvc", "status", "--json"))
    assert set(status) == {"fit@toy-a", "fit@toy-b"}
    diff = json.loads(_run(repo, "dvc", "params", "diff", "--json"))
    assert diff["params/base.yaml"]["train.epochs"] == {"old": 1, "new": 3, "diff": 2}
    assert _ran(_run(repo, "dvc", "repro")) == {"fit@toy-a", "fit@toy-b", "score@toy-a", "score@toy-b"}
    metrics = json.loads(_run(repo, "dvc", "metrics", "diff", "--json"))
    assert metrics["out/toy/a/metrics.json"]["score"] == {"old": 10, "new": 12, "diff": 2}

    # eval.k: only score reads it
    _set(repo / "params/base.yaml", "eval", "k", 6)
    assert _ran(_run(repo, "dvc", "repro")) == {"score@toy-a", "score@toy-b"}

    # a variant file: only that variant's stages
    _set(repo / "params/variants/a.yaml", "train", "lr", 4)
    assert _ran(_run(repo, "dvc", "repro")) == {"fit@toy-a", "score@toy-a"}

    # features in the dataset layer: prep reads it (the later stages rerun on its output)
    _set(repo / "params/datasets/toy.yaml", "features", "n", 7)
    assert _ran(_run(repo, "dvc", "repro")) == {
        "prep@toy",
        "fit@toy-a",
        "fit@toy-b",
        "score@toy-a",
        "score@toy-b",
    }


def test_project_dvc_config_has_a_default_local_remote() -> None:
    text = (ROOT / ".dvc/config").read_text()
    assert "remote = local" in text and "fian-dvc-remote" in text


HISTORY_STAGE = '''"""A stand-in train stage: history.csv (epoch, loss, val R@1) and numbers-only metrics from train.lr."""
import argparse, csv, json
from pathlib import Path
import yaml

p = argparse.ArgumentParser()
p.add_argument("--params", nargs="+", required=True)
p.add_argument("--overrides")
p.add_argument("--out", required=True)
a = p.parse_args()
lr = yaml.safe_load(open(a.params[0]))["train"]["lr"]
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
with open(out / "history.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["epoch", "loss", "val/R@1,IoU=0.5"])
    for e in (1, 2, 3):
        w.writerow([e, round(1.0 / (e * lr), 4), round(0.1 * e * lr, 4)])
(out / "train_metrics.json").write_text(json.dumps({"val/R@1,IoU=0.5": round(0.3 * lr, 4), "best_epoch": 3}))
(out / "train_info.json").write_text(json.dumps({"unit": "fraction"}))
'''


def test_metrics_and_plots_diff_after_the_documented_commands(tmp_path: Path) -> None:
    """README "Changing params and running experiments": after a recorded run, `git add dvc.lock; git commit`; then a params edit,
    `dvc repro`, and `dvc metrics diff` (numbers only) and `dvc plots diff` (loss and val R@1 per
    epoch, both revisions) work."""
    (tmp_path / "toystages").mkdir()
    (tmp_path / "toystages/__init__.py").write_text("")
    (tmp_path / "toystages/train.py").write_text(HISTORY_STAGE)
    (tmp_path / "params/datasets").mkdir(parents=True)
    (tmp_path / "params/base.yaml").write_text(yaml.safe_dump({"train": {"lr": 1}}))
    (tmp_path / "params/datasets/toy.yaml").write_text("{}\n")
    run = "out/{dataset}"
    train = R.Stage(
        name="train", module="train", package="toystages", phase="model", doc="toy train",
        wildcards=("dataset",), layers=("base", "dataset"), keys=("train",),
        args=(R.Arg("--out", run, "value"),),
        outputs=(
            R.Out(f"{run}/history.csv", plot=True, plot_xy=("epoch", "loss"), plot_ys=("val/R@1,IoU=0.5",)),
            R.Out(f"{run}/train_metrics.json", metric=True),
            R.Out(f"{run}/train_info.json"),
        ),
    )  # fmt: skip
    (tmp_path / "params.yaml").write_text(render_overrides(ROOT))
    plan = R.Plan(datasets=(R.DatasetPlan("toy", variants=("a",)),))
    (tmp_path / "dvc.yaml").write_text(render_dvc(plan, "test", tmp_path, stages=(train,)))
    _run(tmp_path, "git", "init", "-q")
    _run(tmp_path, "dvc", "init", "-q")
    _run(tmp_path, "dvc", "repro")
    _run(tmp_path, "git", "add", "-A")  # the documented step: commit dvc.lock (and dvc.yaml, params)
    _run(tmp_path, "git", "commit", "-qm", "first run")
    _set(tmp_path / "params/base.yaml", "train", "lr", 2)
    _run(tmp_path, "dvc", "repro")
    metrics = json.loads(_run(tmp_path, "dvc", "metrics", "diff", "--json"))
    diff = metrics["out/toy/train_metrics.json"]
    assert diff["val/R@1,IoU=0.5"] == {"old": 0.3, "new": 0.6, "diff": 0.3}
    shown = json.loads(_run(tmp_path, "dvc", "metrics", "show", "--json"))
    assert "unit" not in json.dumps(shown)  # text lives in train_info.json, not among the metrics
    plots = json.loads(_run(tmp_path, "dvc", "plots", "diff", "--json", "--split"))
    ids = set(plots["data"]) if "data" in plots else set(plots)
    assert "out/toy/history.csv" in ids, ids  # the loss per epoch (the stage's own plot)
    assert "toy val/R@1,IoU=0.5" in ids, ids  # validation R@1 per epoch
    rows = plots["data"]["toy val/R@1,IoU=0.5"] if "data" in plots else plots["toy val/R@1,IoU=0.5"]
    text = json.dumps(rows)
    assert "HEAD" in text and "workspace" in text and "0.6" in text  # both revisions, the new values
    # offline (README "Changing params and running experiments"): DVC's own page loads vega from a CDN; the page of
    # `fian plots-template` holds the libraries inline and DVC fills its plots in
    _run(tmp_path, "dvc", "plots", "show", "-o", "online")
    assert re.search(r"<script[^>]*\ssrc=\"https://", (tmp_path / "online/index.html").read_text())
    _run(tmp_path, str(BIN / "fian"), "plots-template")
    _run(tmp_path, "dvc", "plots", "show", "--html-template", ".dvc/plots/offline.html", "-o", "offline")
    page = (tmp_path / "offline/index.html").read_text()
    assert not re.search(r"<script[^>]*\ssrc=", page) and "https://cdn" not in page
    assert page.count("vegaEmbed('#") == 2  # the loss plot and the val R@1 plot
    for lib in ("global.vegaLite = {}", "vegaEmbed", "'vega'"):  # the UMD bundles, inline
        assert lib in page, lib
