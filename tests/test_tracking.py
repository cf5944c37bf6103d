"""MLflow tracking against a temporary SQLite store (MLflow 3.17 refuses the plain file store)."""

from __future__ import annotations

import hashlib
import logging

import pytest

from fian.config import Config
from fian.tracking import Tracker, build_tracker, data_hashes, git_commit, metric_key, resolve_uri


def test_metric_key_is_mlflow_legal() -> None:
    assert metric_key("R@1,IoU=0.5") == "R1_IoU0.5"
    assert metric_key("val/R@5,IoU=0.7") == "val/R5_IoU0.7"
    assert metric_key("val/mIoU") == "val/mIoU"
    assert metric_key("a=b@c") == "a_b_c"


def test_git_commit_and_hashes(tmp_path, repo_root) -> None:
    assert git_commit(tmp_path) == "unknown"  # outside git
    head = git_commit(repo_root)
    assert len(head) == 40 or head == "unknown"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.h5").write_bytes(b"abc")
    (tmp_path / "y.npy").write_bytes(b"")
    tags = data_hashes([tmp_path / "d", tmp_path / "y.npy"])
    assert tags == {
        "data_sha256.d/x.h5": hashlib.sha256(b"abc").hexdigest(),
        "data_sha256.y.npy": hashlib.sha256(b"").hexdigest(),
    }


def test_env_var_overrides_uri(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri("sqlite:///a.db") == "sqlite:///a.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///b.db")
    assert resolve_uri("sqlite:///a.db") == "sqlite:///b.db"


def test_disabled_is_a_noop_with_a_log_line(caplog, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="fian.tracking"):
        with Tracker(enabled=False, tracking_uri="sqlite:///x.db", dataset="d", variant="v", stage="train") as t:
            t.log_params({"a": 1})
            t.log_metrics({"loss": 1.0}, step=1)
            t.log_artifact(tmp_path / "nothing")
    assert "tracking is off" in caplog.text
    assert not (tmp_path / "x.db").exists() and t.run_id is None


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating its schema takes seconds)."""
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_logs_params_metrics_artifacts_tags(tmp_path, monkeypatch, store) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # artifacts go to ./mlruns; outside git
    uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = tmp_path / "train.h5"
    data.write_bytes(b"features")
    artifact = tmp_path / "history.csv"
    artifact.write_text("epoch,loss\n1,0.5\n")
    cfg = Config()
    with build_tracker(cfg, stage="train", inputs=[data], tags={"world_size": "1"}) as t:
        t.log_params(cfg.flat())
        for epoch, loss in ((1, 0.9), (2, 0.7)):
            t.log_metrics({"loss": loss, "val/R@1,IoU=0.5": 0.1 * epoch, "skip": float("nan")}, step=epoch)
        t.log_artifact(artifact)
        run_id = t.run_id
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "synthetic/fian/train"
    assert client.get_experiment(run.info.experiment_id).name == "fian/synthetic"
    assert run.data.params["train.lr"] == str(cfg.train.lr)
    assert run.data.params["model.window_sizes"] == str(cfg.model.window_sizes)
    tags = run.data.tags
    assert tags["dataset"] == "synthetic" and tags["variant"] == "fian" and tags["stage"] == "train"
    assert tags["data_sha256.train.h5"] == hashlib.sha256(b"features").hexdigest()
    assert tags["git_commit"] == "unknown"  # cwd is the temp dir, outside git
    hist = client.get_metric_history(run_id, "val/R1_IoU0.5")
    assert [(m.step, round(m.value, 6)) for m in hist] == [(1, 0.1), (2, 0.2)]
    assert "skip" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(run_id)] == ["history.csv"]


def test_failed_block_marks_run_failed(tmp_path, monkeypatch, store) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = store
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker(enabled=True, tracking_uri=uri, dataset="d", variant="v", stage="train") as t:
            raise RuntimeError("boom")
    assert MlflowClient(uri).get_run(t.run_id).info.status == "FAILED"


def test_interrupt_marks_run_killed(tmp_path, monkeypatch, store) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with Tracker(enabled=True, tracking_uri=store, dataset="d", variant="v", stage="train") as t:
            raise KeyboardInterrupt("signal 15")
    assert MlflowClient(store).get_run(t.run_id).info.status == "KILLED"
