"""MLflow for real: a `mlflow server` on loopback observes a short run of the train stage, and the
run, its params and its metrics are found through the server's REST API."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# a tiny dataset layer on top of the real base.yaml and variants/fian.yaml
TINY = {
    "dataset": {"name": "tiny", "feature_dim": 8, "splits": {"train": ["t"], "val": ["v"]}},
    "features": {"num_steps": 16},
    "model": {
        "hidden": 16,
        "heads": 2,
        "self_attn_heads": 2,
        "ffn_dim": 32,
        "window_sizes": [4, 8],
        "stride_ratio": 0.5,
    },
    "train": {"epochs": 2, "batch_size": 8, "lr": 1.0e-3},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _tiny_project(tmp: Path) -> None:
    from fian.data.dataset import GroundingSplit

    params = tmp / "params"
    (params / "datasets").mkdir(parents=True)
    (params / "variants").mkdir()
    shutil.copy(ROOT / "params/base.yaml", params / "base.yaml")
    shutil.copy(ROOT / "params/variants/fian.yaml", params / "variants/fian.yaml")
    (params / "datasets/tiny.yaml").write_text(yaml.safe_dump(TINY))
    rng = np.random.default_rng(0)
    vocab = ["<pad>", "<unk>", "a", "b", "c", "d"]
    for split, q in (("train", 16), ("val", 8)):
        n_videos = q // 2
        start = rng.uniform(0, 10, q)
        GroundingSplit.from_arrays(
            rng.normal(size=(n_videos, 16, 8)).astype(np.float32),
            np.arange(q) // 2,
            rng.integers(2, len(vocab), size=(q, 4)),
            np.full(q, 4),
            np.stack([start, start + 5], 1),
            np.full(q, 20.0),
            num_steps=16,
        ).save(tmp / "data" / f"{split}.h5")
    (tmp / "text").mkdir()
    (tmp / "text/vocab.json").write_text(json.dumps(vocab))
    emb = rng.normal(size=(len(vocab), 300)).astype(np.float32)
    emb[0] = 0
    np.save(tmp / "text/embeddings.npy", emb)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `mlflow server` for the module (it takes seconds and ~1.5 GiB to start)."""
    if shutil.which("mlflow", path=str(BIN)) is None:
        pytest.skip("mlflow is not installed in this environment")
    port = _free_port()
    store = tmp_path_factory.mktemp("mlflow-server") / "server"
    store.mkdir()
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
            "--artifacts-destination", str(store / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        cwd=store, stdout=subprocess.DEVNULL, stderr=open(store / "server.log", "w"),
        start_new_session=True,  # its own process group: the workers go down with it
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, (store / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow server did not come up in 60 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


SECRET = "s3cret-t0ken"  # basic-auth credentials in the URI: MLflow sends them (this server ignores them)


def _with_credentials(url: str) -> str:
    return url.replace("http://", f"http://fian-user:{SECRET}@", 1)


def _artifact(server: str, run_id: str, path: str) -> dict:
    """A JSON artifact of a run, downloaded through the server's artifact proxy."""
    with urllib.request.urlopen(f"{server}/get-artifact?path={path}&run_uuid={run_id}", timeout=10) as r:
        return json.loads(r.read())


def test_train_run_is_found_through_the_rest_api(tmp_path: Path, server: str, monkeypatch) -> None:
    """... and a tracking URI with a password (in the environment and in params) never reaches the
    stage's output, nor the run's params or config artifact on the server (issue 18, "Secrets")."""
    _tiny_project(tmp_path)
    tiny = yaml.safe_load((tmp_path / "params/datasets/tiny.yaml").read_text())
    tiny["tracking"] = {"tracking_uri": _with_credentials(server)}  # the environment wins; params are logged
    (tmp_path / "params/datasets/tiny.yaml").write_text(yaml.safe_dump(tiny))
    env = {**os.environ, "MLFLOW_TRACKING_URI": _with_credentials(server), "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = [
        sys.executable, "-m", "fian_pipeline.train",
        "--params", "params/base.yaml", "params/datasets/tiny.yaml", "params/variants/fian.yaml",
        "--data", "data", "--text", "text", "--out", "results/tiny/fian", "--device", "cpu",
        "--set", "train.lr=5e-4",  # a one-off override (README "Changing params and running experiments"): in the config, MLflow, the checkpoint
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists()  # logged to the server, not to a local store
    assert SECRET not in proc.stdout + proc.stderr
    assert f"at http://fian-user:***@127.0.0.1:{server.rsplit(':', 1)[1]}" in proc.stderr  # the tracker's line
    from fian.train import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "results/tiny/fian/checkpoint.pt")
    assert ckpt["overrides"] == {"train.lr": 0.0005} and ckpt["config"]["train"]["lr"] == 0.0005

    exps = _post(f"{server}/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    exp = next(e for e in exps if e["name"] == "fian/tiny")
    runs = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    assert len(runs) == 1
    run = runs[0]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["mlflow.runName"].startswith("tiny/fian/train ")
    assert run["info"]["status"] == "FINISHED"
    assert json.loads(tags["fian.overrides"]) == {"train.lr": 0.0005}
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.lr"] == "0.0005"
    assert (
        params["train.epochs"] == "2" and params["model.hidden"] == "16" and params["dataset.name"] == "tiny"
    )
    assert params["tracking.tracking_uri"] == _with_credentials(server).replace(SECRET, "***")
    with urllib.request.urlopen(f"{server}/get-artifact?path=config.yaml&run_uuid={run['info']['run_id']}") as r:
        logged_config = r.read().decode()
    assert "tracking_uri: http://fian-user:***@127.0.0.1" in logged_config and SECRET not in logged_config
    from fian.train import load_checkpoint

    stored = load_checkpoint(tmp_path / "results/tiny/fian/checkpoint.pt")["config"]  # logged to the server too
    assert stored["tracking"]["tracking_uri"] == params["tracking.tracking_uri"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert "loss" in metrics and any(k.startswith("val/") for k in metrics), sorted(metrics)
    history = _get(
        f"{server}/api/2.0/mlflow/metrics/get-history?run_id={run['info']['run_id']}&metric_key=loss"
    )["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2]  # one value per epoch
    # the same numbers the stage wrote for DVC
    written = json.loads((tmp_path / "results/tiny/fian/train_metrics.json").read_text())
    assert metrics["best/final_loss"] == pytest.approx(written["final_loss"])
    arts = _get(f"{server}/api/2.0/mlflow/artifacts/list?run_id={run['info']['run_id']}").get("files", [])
    assert {"history.csv", "train_metrics.json"} <= {Path(a["path"]).name for a in arts}, arts

    # evaluate the checkpoint: its run names the train run that wrote it
    ev = [
        sys.executable, "-m", "fian_pipeline.evaluate",
        "--params", "params/base.yaml", "params/datasets/tiny.yaml", "params/variants/fian.yaml",
        "--data", "data", "--text", "text", "--checkpoint", "results/tiny/fian/checkpoint.pt",
        "--split", "val", "--out", "results/tiny/fian", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(ev, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr and "fian-user:***@" in proc.stderr
    runs = _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                          "filter": "tags.stage = 'evaluate'"})["runs"]  # fmt: skip
    (evaluation,) = runs
    etags = {t["key"]: t["value"] for t in evaluation["data"]["tags"]}
    assert etags["fian.train_run_id"] == run["info"]["run_id"]
    inputs = evaluation.get("inputs", {}).get("dataset_inputs", [])
    assert [d["dataset"]["name"] for d in inputs] == ["tiny/val"], inputs
    # the input's sha256: the file's own (hashed once by the stage, the value its provenance records)
    (itags,) = [{t["key"]: t["value"] for t in d["tags"]} for d in inputs]
    real = hashlib.sha256((tmp_path / "data/val.h5").read_bytes()).hexdigest()
    info = json.loads((tmp_path / "results/tiny/fian/info_val.json").read_text())
    assert itags["sha256"] == real == info["provenance"]["inputs_sha256"]["val.h5"]
    exp_tags = {t["key"]: t["value"] for t in _get(f"{server}/api/2.0/mlflow/experiments/get?experiment_id="
                                                    f"{exp['experiment_id']}")["experiment"]["tags"]}  # fmt: skip
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"
    # list params as JSON lists, not Python tuple reprs (issue 19 item 3)
    assert json.loads(params["model.window_sizes"]) == [4, 8] and json.loads(params["model.branches"]) == ["qv", "vq"]

    # the moment prior's centres: an artifact, not a param; the figures of the plots stage: artifacts
    # of its run, which names the train run (in-process: the stages' own code, the server's store)
    from fian_pipeline import baseline, evaluate, plots

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    layers = ["params/base.yaml", "params/datasets/tiny.yaml", "params/variants/fian.yaml"]
    assert baseline.main(["--params", *layers[:2], "--data", "data", "--split", "val", "--out", "results/tiny/prior"]) == 0
    # the video-shuffle check (Table 7): its own run, naming the train run, its metrics kept apart
    assert evaluate.main(["--params", *layers, "--data", "data", "--text", "text", "--checkpoint",
                          "results/tiny/fian/checkpoint.pt", "--split", "val", "--out", "results/tiny/fian/shuffled",
                          "--shuffle-videos", "--device", "cpu"]) == 0  # fmt: skip
    assert plots.main(["--params", *layers, "--predictions", "results/tiny/fian/predictions_val.jsonl",
                       "--history", "results/tiny/fian/history.csv", "--checkpoint", "results/tiny/fian/checkpoint.pt",
                       "--data", "data", "--text", "text", "--split", "val", "--out", "figures"]) == 0  # fmt: skip
    by_stage = {}
    for r in _post(f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]:
        by_stage[{t["key"]: t["value"] for t in r["data"]["tags"]}["stage"]] = r
    prior = by_stage["baseline"]
    assert {p["key"] for p in prior["data"]["params"]} == {"baseline", "k", "seed"}
    arts = _get(f"{server}/api/2.0/mlflow/artifacts/list?run_id={prior['info']['run_id']}")["files"]
    assert {Path(a["path"]).name for a in arts} == {"metrics_val.json", "moment_prior.json"}
    got = _artifact(server, prior["info"]["run_id"], "moment_prior.json")
    centres = np.asarray(got["centres"])
    assert centres.shape == (got["k"], 2) and np.all((0 <= centres) & (centres <= 1)) and np.all(centres[:, 0] <= centres[:, 1])
    assert len(got["weights"]) == got["k"] and got["weights"] == sorted(got["weights"], reverse=True)
    first = json.loads((tmp_path / "results/tiny/prior/predictions_val.jsonl").read_text().splitlines()[0])
    np.testing.assert_allclose(np.asarray(first["segments"][0]) / first["duration"], centres[0], atol=1e-6)  # its top-1
    shuffle = by_stage["shuffle"]
    stags = {t["key"]: t["value"] for t in shuffle["data"]["tags"]}
    assert stags["fian.train_run_id"] == run["info"]["run_id"] and stags["fian.shuffle_seed"] == "0"
    assert stags["mlflow.runName"].startswith("tiny/fian/shuffle:val ")
    smetrics = {m["key"]: m["value"] for m in shuffle["data"]["metrics"]}
    expected = json.loads((tmp_path / "results/tiny/fian/shuffled/metrics_val.json").read_text())
    assert smetrics["val_shuffled/R1_IoU0.5"] == pytest.approx(expected["R@1,IoU=0.5"]), smetrics
    pruns = by_stage["plots"]
    assert {t["key"]: t["value"] for t in pruns["data"]["tags"]}["fian.train_run_id"] == run["info"]["run_id"]
    figs = _get(f"{server}/api/2.0/mlflow/artifacts/list?run_id={pruns['info']['run_id']}&path=figures")["files"]
    assert sorted(Path(a["path"]).name for a in figs) == ["attention_val.png", "timeline_val.png", "training_curves_val.png"]
    assert all(int(a["file_size"]) > 5000 for a in figs)


def test_concurrent_jobs_through_the_server_all_succeed(tmp_path: Path, server: str) -> None:
    """The cluster way: jobs reach one `mlflow server` through MLFLOW_TRACKING_URI."""
    from test_tracking import check_all_logged, concurrent_jobs

    results = concurrent_jobs(tmp_path, server, n=4)
    assert [r.returncode for r in results] == [0] * 4, "\n---\n".join(r.stderr[-1500:] for r in results)
    check_all_logged(server)
    assert not list(tmp_path.glob("*.db"))  # nothing logged to a local store
