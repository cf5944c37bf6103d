"""Bring your own dataset (README "Bring your own dataset"), run as the recipe says on a made tiny
dataset: files in place (`source: local`), its own word-vector file (`text.vectors_file`), a
params file with the required keys, the dataset's own target (`dataset_<name>`); then its params
are edited and the workflow reruns without any raw file being touched (hashes and mtimes)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}

MINE = {
    "dataset": {
        "name": "mine", "format": "activitynet", "feature_layout": "activitynet_c3d", "feature_dim": 64,
        "backbone": "c3d", "splits": {"train": ["train.json"], "val": ["val.json"], "test": ["test.json"]},
    },
    "text": {"word_dim": 8, "vectors_file": "data/raw/mine/vectors/mine.8d.txt"},
    "features": {"num_steps": 32},
    "model": {"hidden": 16, "heads": 2, "self_attn_heads": 2, "ffn_dim": 32, "window_sizes": [4, 8, 16],
              "stride_ratio": 0.25, "freeze_embeddings": False},
    "loss": {"alpha": 0.005},
    "train": {"lr": 1.0e-3, "batch_size": 16, "epochs": 1},
    "tracking": {"enabled": False},
}  # fmt: skip
CONFIG = {"datasets": {"mine": {"source": "local", "variants": ["fian"], "plots": False}}, "eval_split": "test"}


def _snakemake(proj: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "snakemake"), *args, "--profile", "workflow/profiles/local", "--cores", "2",
         "--configfile", "workflow/config/mine.yaml"],
        cwd=proj, env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _project(tmp: Path) -> Path:
    """The workflow files, params/datasets/mine.yaml, the config, and the made dataset in data/raw/mine."""
    proj = tmp / "proj"
    proj.mkdir()
    shutil.copy(ROOT / "Snakefile", proj / "Snakefile")
    for d in ("workflow", "params"):
        shutil.copytree(ROOT / d, proj / d)
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    (proj / "params/datasets/mine.yaml").write_text(yaml.safe_dump(MINE))
    (proj / "workflow/config/mine.yaml").write_text(yaml.safe_dump(CONFIG))
    # the user's files: made by the synthetic generator (ActivityNet layout), then simply in place
    gen = proj / "gen.yaml"
    gen.write_text(yaml.safe_dump({"dataset": {
        "name": "synthetic", "feature_dim": 64,
        "synthetic": {"n_videos": {"train": 16, "val": 4, "test": 4}, "queries_per_video": 2, "raw_steps": [20, 60]},
    }}))  # fmt: skip
    raw = proj / "data/raw/mine"
    subprocess.run(
        [sys.executable, "-m", "fian_pipeline.generate", "--params", "params/base.yaml",
         "params/datasets/synthetic.yaml", str(gen), "--annotations-out", str(raw / "annotations"),
         "--features-out", str(raw / "features")],
        cwd=proj, env=ENV, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    words = sorted(
        {
            w
            for f in (raw / "annotations" / f"{s}.json" for s in ("train", "val", "test"))
            for rec in json.loads(f.read_text()).values()
            for s in rec["sentences"]
            for w in re.findall(r"[a-z]+", s.lower())
        }
    )
    rng = np.random.default_rng(0)
    (raw / "vectors").mkdir()
    (raw / "vectors/mine.8d.txt").write_text(
        "".join(w + " " + " ".join(f"{x:.4f}" for x in rng.normal(size=8)) + "\n" for w in words)
    )
    return proj


def _fingerprint(raw: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(raw)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(raw.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_own_dataset_recipe_then_a_params_edit_leaves_the_raw_files_alone(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    raw = proj / "data/raw/mine"
    before = _fingerprint(raw)
    plan = _snakemake(proj, "-n", "dataset_mine").stdout
    jobs = set(re.findall(r"^rule (\w+):", plan, re.M))
    assert jobs == {"annotations", "features", "text", "prepare", "train", "evaluate", "baseline", "dataset_mine"}, jobs
    # step 4 of README "Bring your own dataset", as written there (<name> = mine)
    from readme_commands import one

    words = [w.replace("<name>", "mine") for w in one("snakemake dataset_<name>")]
    proc = subprocess.run([str(BIN / "snakemake"), *words[1:]], cwd=proj, env=ENV, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    m = json.loads((proj / "results/mine/fian/metrics_test.json").read_text())
    assert 0 <= m["R@1,IoU=0.5"] <= 1
    coverage = json.loads((proj / "data/interim/mine/text/coverage.json").read_text())
    assert "fallback" not in coverage or not coverage["fallback"]  # the dataset's own vectors, not the fallback
    # the logs name what the dataset is, not a release it only shares a file layout with
    text_log = (proj / "logs/text/mine.log").read_text()
    assert "vectors from mine.8d.txt (the dataset's own)" in text_log and "GloVe" not in text_log, text_log[-2000:]
    train_log = (proj / "logs/train/mine-fian.log").read_text()  # (its files are generated: said so)
    assert "PCA" not in train_log and "ActivityNet Captions" not in train_log, train_log[-3000:]
    assert not list((proj / "reports").glob("table*.tex"))  # the dataset target leaves the tables alone
    assert _fingerprint(raw) == before

    # edit the dataset's params: a training value and an annotation policy
    data = yaml.safe_load((proj / "params/datasets/mine.yaml").read_text())
    data["train"]["epochs"] = 2
    data["dataset"]["policy"] = {"empty_sentence": "fail"}
    (proj / "params/datasets/mine.yaml").write_text(yaml.safe_dump(data))
    plan = _snakemake(proj, "-n", "dataset_mine").stdout
    jobs = set(re.findall(r"^rule (\w+):", plan, re.M))
    assert not jobs & {"download_annotations", "download_features", "generate"}, jobs
    assert {"annotations", "train", "evaluate"} <= jobs, jobs
    _snakemake(proj, "dataset_mine")
    assert _fingerprint(raw) == before  # nothing under data/raw/mine was rewritten, deleted or touched
    last = _snakemake(proj, "dataset_mine")
    assert "Nothing to be done" in last.stdout + last.stderr


def test_a_dataset_file_without_the_required_keys_fails_before_any_job(tmp_path: Path) -> None:
    proj = tmp_path
    shutil.copy(ROOT / "Snakefile", proj / "Snakefile")
    for d in ("workflow", "params"):
        shutil.copytree(ROOT / d, proj / d)
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    (proj / "workflow/config/mine.yaml").write_text(yaml.safe_dump(CONFIG))
    lacking = json.loads(json.dumps(MINE))
    del lacking["train"]["lr"], lacking["model"]["window_sizes"]
    (proj / "params/datasets/mine.yaml").write_text(yaml.safe_dump(lacking))
    out = _snakemake(proj, "-n", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "mine.yaml" in text
    assert "train.lr" in text and "model.window_sizes" in text and "train.batch_size" not in text
    # all keys set, but no files in place: said before any job, naming the folder
    (proj / "params/datasets/mine.yaml").write_text(yaml.safe_dump(MINE))
    out = _snakemake(proj, "-n", check=False)
    text = out.stdout + out.stderr
    assert "mine (source: local): data/raw/mine/annotations is missing" in text
    assert out.returncode != 0 and not (proj / "data").exists()
