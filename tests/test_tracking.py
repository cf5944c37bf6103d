"""MLflow tracking against a temporary SQLite store (MLflow 3.17 refuses the plain file store)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path

import pytest

from fian.config import Config
from fian.tracking import Tracker, build_tracker, data_hashes, git_commit, metric_key, resolve_uri


def test_metric_key_is_mlflow_legal() -> None:
    assert metric_key("R@1,IoU=0.5") == "R1_IoU0.5"
    assert metric_key("val/R@5,IoU=0.7") == "val/R5_IoU0.7"
    assert metric_key("val/mIoU") == "val/mIoU"
    assert metric_key("dR@1,IoU=0.5") == "dR1_IoU0.5"  # Yuan et al.'s discounted recall
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


def test_a_tracker_leaves_the_uri_of_the_next_one_alone(tmp_path, monkeypatch) -> None:
    """mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI; a second Tracker must still use its own URI."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = (f"sqlite:///{tmp_path / n}.db" for n in ("a", "b"))
    with Tracker(enabled=True, tracking_uri=a, dataset="d", variant="v", stage="train"):
        pass
    with Tracker(enabled=True, tracking_uri=b, dataset="d", variant="v", stage="train") as t:
        pass
    assert t.uri == b and MlflowClient(b).get_run(t.run_id).info.status == "FINISHED"
    import os

    assert "MLFLOW_TRACKING_URI" not in os.environ


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
        t.log_json({"centres": ((0.1, 0.25), (0.5, 1.0)), "k": 2}, "moment_prior.json")
        run_id = t.run_id
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("synthetic/fian/train ")  # then a UTC time and 4 hex digits
    assert client.get_experiment(run.info.experiment_id).name == "fian/synthetic"
    assert run.data.params["train.lr"] == str(cfg.train.lr)
    # list params are JSON lists (not Python's tuple repr "(8, 16, 32, 64)")
    assert run.data.params["model.window_sizes"] == "[8, 16, 32, 64]" == json.dumps(list(cfg.model.window_sizes))
    assert json.loads(run.data.params["model.branches"]) == list(cfg.model.branches)
    assert json.loads(run.data.params["eval.iou_thresholds"]) == list(cfg.eval.iou_thresholds)
    assert run.data.params["text.vectors_file"] == "None" and run.data.params["train.amp"] == str(cfg.train.amp)
    tags = run.data.tags
    assert tags["dataset"] == "synthetic" and tags["variant"] == "fian" and tags["stage"] == "train"
    assert tags["data_sha256.train.h5"] == hashlib.sha256(b"features").hexdigest()
    assert tags["git_commit"] == "unknown"  # cwd is the temp dir, outside git
    hist = client.get_metric_history(run_id, "val/R1_IoU0.5")
    assert [(m.step, round(m.value, 6)) for m in hist] == [(1, 0.1), (2, 0.2)]
    assert "skip" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(run_id)] == ["history.csv", "moment_prior.json"]
    got = json.loads(Path(client.download_artifacts(run_id, "moment_prior.json", str(tmp_path))).read_text())
    assert got == {"centres": [[0.1, 0.25], [0.5, 1.0]], "k": 2}


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


# --------------------------------------------------------------------------------------------
# many processes, one store (issue 12 item 1)
# --------------------------------------------------------------------------------------------

_JOB = """
import sys, time, pathlib
from fian.tracking import Tracker
go = pathlib.Path(sys.argv[2])
while not go.exists():  # start together: the race is at the store's creation
    time.sleep(0.01)
with Tracker(enabled=True, tracking_uri=sys.argv[1], dataset="conc", variant="v" + sys.argv[3], stage="train") as t:
    t.log_params({"i": sys.argv[3]})
    for epoch in range(1, 6):
        t.log_metrics({"loss": 1.0 / epoch}, step=epoch)
"""


def concurrent_jobs(tmp_path, uri: str, n: int = 4, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """``n`` processes that each log one run to ``uri``, released at the same instant."""
    import os
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "MLFLOW_TRACKING_URI": uri}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _JOB, uri, str(go), str(i)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]  # fmt: skip
    time.sleep(1.0)  # let them all import mlflow and wait on the file
    go.touch()
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def check_all_logged(uri: str, n: int = 4) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fian/conc")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["variant"] for r in runs) == [f"v{i}" for i in range(n)]
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss")) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_concurrent_jobs_on_a_fresh_sqlite_store_all_succeed(tmp_path) -> None:
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # not even its folder exists
    results = concurrent_jobs(tmp_path, uri)
    assert [r.returncode for r in results] == [0] * 4, "\n---\n".join(r.stderr[-1500:] for r in results)
    check_all_logged(uri)
    # the store still works for a single later run
    with Tracker(enabled=True, tracking_uri=uri, dataset="conc", variant="after", stage="train") as t:
        t.log_metrics({"loss": 1.0}, step=1)


def test_retry_waits_out_a_locked_database() -> None:
    from fian.tracking import retry

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retry(flaky, "test") == "ok" and len(calls) == 3
    with pytest.raises(ValueError, match="other"):  # anything else is not retried
        retry(lambda: (_ for _ in ()).throw(ValueError("other")), "test")


# --------------------------------------------------------------------------------------------
# runs as people browse them (issue 13 item 5)
# --------------------------------------------------------------------------------------------


def test_workflow_parent_unique_names_dataset_kind_and_dirty_flag(tmp_path, monkeypatch, store) -> None:
    from mlflow.tracking import MlflowClient

    from fian.tracking import WORKFLOW_ENV

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(WORKFLOW_ENV, "wf-0001")
    data = tmp_path / "test.h5"
    data.write_bytes(b"split")
    client = MlflowClient(store)
    with Tracker(enabled=True, tracking_uri=store, dataset="browse", variant="fian", stage="train", out="r") as a:
        a.log_metrics({"loss": 1.0}, step=1)
        assert client.get_run(a.parent_run_id).info.status == "RUNNING"
    assert client.get_run(a.parent_run_id).info.status == "FINISHED"  # no job of it runs
    with Tracker(enabled=True, tracking_uri=store, dataset="browse", variant="fian", stage="evaluate",
                 split="test", out="r", tags={"fian.train_run_id": a.run_id}) as b:  # fmt: skip
        b.log_dataset("browse/test", data, context="evaluation", digests={"features_sha256": "f" * 64})
        assert client.get_run(a.parent_run_id).info.status == "RUNNING"  # a job of it runs again
    assert a.parent_run_id == b.parent_run_id
    parent = client.get_run(a.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["fian.kind"] == "workflow"
    assert parent.info.run_name.startswith("workflow ") and "wf-0001" in parent.info.run_name
    ra, rb = client.get_run(a.run_id), client.get_run(b.run_id)
    assert ra.data.tags["mlflow.parentRunId"] == rb.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert rb.data.tags["fian.train_run_id"] == a.run_id
    assert rb.info.run_name.startswith("browse/fian/evaluate:test ")
    # a rerun of the same job: another name
    with Tracker(enabled=True, tracking_uri=store, dataset="browse", variant="fian", stage="train", out="r") as c:
        pass
    assert client.get_run(c.run_id).info.run_name != ra.info.run_name
    # the dataset, its digest and hashes
    (inp,) = rb.inputs.dataset_inputs
    assert inp.dataset.name == "browse/test" and inp.dataset.digest == hashlib.sha256(b"split").hexdigest()[:32]
    itags = {t.key: t.value for t in inp.tags}
    assert itags["sha256"] == hashlib.sha256(b"split").hexdigest() and itags["features_sha256"] == "f" * 64
    assert itags["mlflow.data.context"] == "evaluation"
    # typed for model training; git flags (outside git: unknown)
    exp = client.get_experiment(ra.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert ra.data.tags["git_dirty"] == "unknown" and ra.data.tags["git_commit"] == "unknown"


def test_git_dirty_flag(tmp_path) -> None:
    from fian.tracking import git_dirty

    def git(*a: str) -> None:
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    assert git_dirty(tmp_path) == "unknown"
    git("init", "-q")
    (tmp_path / "f.txt").write_text("a\n")
    git("add", "f.txt")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
    (tmp_path / "new.txt").write_text("untracked files do not count\n")
    assert git_dirty(tmp_path) == "false"
    (tmp_path / "f.txt").write_text("b\n")
    assert git_dirty(tmp_path) == "true"


def test_a_run_left_running_by_a_dead_process_is_marked_killed(tmp_path, monkeypatch, store) -> None:
    import os
    import signal
    import sys

    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    job = ("import sys, time\nfrom fian.tracking import Tracker\n"
           "t = Tracker(enabled=True, tracking_uri=sys.argv[1], dataset='stale', variant='fian', stage='train', out='r')\n"
           "t.__enter__(); print(t.run_id, flush=True); time.sleep(600)\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", job, store], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        dead = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    client = MlflowClient(store)
    assert client.get_run(dead).info.status == "RUNNING"
    with Tracker(enabled=True, tracking_uri=store, dataset="stale", variant="fian", stage="train", out="other"):
        pass
    assert client.get_run(dead).info.status == "RUNNING"  # another job (other --out): not touched
    with Tracker(enabled=True, tracking_uri=store, dataset="stale", variant="fian", stage="train", out="r") as again:
        pass
    run = client.get_run(dead)
    assert run.info.status == "KILLED" and again.run_id in run.data.tags["fian.ended_by"]


def test_data_hashes_skip_a_killed_writers_temp(tmp_path) -> None:
    import hashlib

    from fian.tracking import data_hashes

    folder = tmp_path / "annotations"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(b"rows")
    (folder / ".train.parquet.fian-tmp.host.123-456.0badc0de.parquet").write_bytes(b"half")
    assert data_hashes([folder]) == {"data_sha256.annotations/train.parquet": hashlib.sha256(b"rows").hexdigest()}


# a killed workflow invocation's parent runs (the CI failure of stop 14: the rehearsal's rerun left
# `workflow <id>` RUNNING after its Snakemake was SIGKILLed with its jobs)
_DIE_IN = """
import sys, time
import mlflow
from fian.tracking import Tracker
where = sys.argv[2]
if where == "before-child":  # the parent exists, its first child not yet
    def stuck(*a, **k):
        print("stuck", flush=True); time.sleep(600)
    mlflow.start_run = stuck
t = Tracker(enabled=True, tracking_uri=sys.argv[1], dataset=sys.argv[3], variant="fian", stage="train", out="r")
with t:
    if where == "before-settle":  # the child ends, then the parent is not settled
        def stuck(self, *a, **k):
            print("stuck", flush=True); time.sleep(600)
        Tracker._settle = stuck
    if where == "alive":
        print("stuck", flush=True); time.sleep(600)
"""


def _die_in(tmp_path: Path, store: str, where: str, dataset: str, workflow: str) -> subprocess.Popen:
    """A job of workflow invocation ``workflow`` stopped at ``where``; the caller SIGKILLs it."""
    import os
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "FIAN_WORKFLOW_RUN": workflow}
    proc = subprocess.Popen([sys.executable, "-c", _DIE_IN, store, where, dataset], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "stuck"
    return proc


def test_parents_left_running_by_a_killed_invocation_are_ended_by_the_next_one(tmp_path, monkeypatch, store) -> None:
    import signal

    from mlflow.tracking import MlflowClient

    from fian.tracking import WORKFLOW_ENV

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(store)

    def parents(dataset: str) -> list:
        exp = client.get_experiment_by_name(f"fian/{dataset}")
        return client.search_runs([exp.experiment_id], "tags.`fian.kind` = 'workflow'")

    live = _die_in(tmp_path, store, "alive", "c", "wf-live")  # a job still running (a cluster job)
    for where, dataset in (("before-child", "a"), ("before-settle", "b")):
        proc = _die_in(tmp_path, store, where, dataset, "wf-dead")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        (parent,) = parents(dataset)
        assert parent.info.status == "RUNNING"
    try:
        # the next invocation runs one job, of another dataset: every dead parent of this folder ends
        monkeypatch.setenv(WORKFLOW_ENV, "wf-next")
        with Tracker(enabled=True, tracking_uri=store, dataset="d", variant="fian", stage="train", out="r"):
            pass
        (a,) = parents("a")
        assert a.info.status == "KILLED"  # no job ever ran under it
        (b,) = parents("b")
        assert b.info.status == "FINISHED"  # its one job had finished
        (c,) = parents("c")
        assert c.info.status == "RUNNING"  # a job of it still runs: not touched
        (d,) = parents("d")
        assert d.info.status == "FINISHED"
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait(timeout=30)
    # another project folder's dead parents are not this folder's business
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    proc = _die_in(other, store, "before-child", "e", "wf-dead2")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    monkeypatch.chdir(tmp_path)
    with Tracker(enabled=True, tracking_uri=store, dataset="d", variant="fian", stage="train", out="r"):
        pass
    (e,) = parents("e")
    assert e.info.status == "RUNNING"


def test_an_experiment_created_by_another_job_at_the_same_moment_is_used(tmp_path, monkeypatch, store) -> None:
    """On a server (no store lock) two jobs may both find no experiment and both create it: the
    second gets RESOURCE_ALREADY_EXISTS (seen in tests/test_mlflow_server.py under load).  Simulated:
    the experiment exists, but this job's first lookup misses it."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(store)
    exp = client.create_experiment("fian/raced")
    real, calls = MlflowClient.get_experiment_by_name, []

    def late(self, name):
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", late)
    with Tracker(enabled=True, tracking_uri=store, dataset="raced", variant="fian", stage="train", out="r") as t:
        t.log_metrics({"loss": 1.0}, step=1)
    assert t.experiment_id == exp and len(calls) >= 2
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_run(t.run_id).info.status == "FINISHED"


def test_the_demo_links_open_each_experiments_runs(tmp_path, monkeypatch, store) -> None:
    """The demo prints, per dataset, the link to its runs with the experiment id read from the store
    (MLflow 3.17's UI lands a fresh browser on the GenAI overview unless the URL says workflowType)."""
    from mlflow.tracking import MlflowClient

    from fian.tracking import ui_runs_url
    from fian_pipeline.demo import mlflow_where

    monkeypatch.chdir(tmp_path)
    with Tracker(enabled=True, tracking_uri=store, dataset="linked", variant="v", stage="train"):
        pass
    exp = MlflowClient(store).get_experiment_by_name("fian/linked").experiment_id
    lines = mlflow_where(store, ["linked", "never_run"])
    assert lines[0] == f"MLflow   {store}  ->  mlflow ui --backend-store-uri {store}   then open:"
    assert f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning  fian/linked" in lines[1]
    assert "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning  (the experiments list)" in lines[2]
    assert "Model training" in lines[3]
    assert ui_runs_url("http://h:5000/", "7") == "http://h:5000/#/experiments/7/runs?workflowType=machine_learning"
    served = mlflow_where("http://mlflow.cluster:5000", ["linked"])
    assert served[1].strip().startswith("http://mlflow.cluster:5000/#/experiments?workflowType=machine_learning")


def test_the_installed_mlflow_ui_still_reads_the_workflow_type_from_the_url() -> None:
    """A drift alarm for docs/TRAINING.md "MLflow" (checked in a real browser with
    docs/tools/mlflow_ui_landing.js): the UI bundle of the installed mlflow keeps its view in
    localStorage ``mlflow.workflowType`` (default GenAI) and takes ``workflowType`` from the URL.
    When an MLflow upgrade changes that, this fails: rerun the script and fix the docs and links."""
    mlflow = pytest.importorskip("mlflow")
    js = Path(mlflow.__file__).parent / "server/js/build/static/js"
    if not js.is_dir():
        pytest.skip("this mlflow ships no UI bundle (mlflow-skinny)")
    main = next(js.glob("main.*.js")).read_text(errors="replace")
    assert 'key:"mlflow.workflowType"' in main and 'get("workflowType")' in main
    assert 'MACHINE_LEARNING="machine_learning"' in main and 'GENAI="genai"' in main
def test_seed_runs_are_named_tagged_and_grouped(tmp_path, monkeypatch, store) -> None:
    """Issue 16: one seed's job names its run by the seed and tags it; the seeds of one variant share
    the tag fian.group (the UI's "Group by"); a job without --seed still records train.seed."""
    import dataclasses

    from mlflow.tracking import MlflowClient

    from fian_pipeline.provenance import clean_uri, mlflow_ref

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    ids = {}
    for seed in (0, 1, None):
        cfg = Config() if seed is None else dataclasses.replace(Config(), train=dataclasses.replace(Config().train, seed=seed))
        with build_tracker(cfg, stage="train", seed=seed, out=tmp_path / f"run{seed}") as t:
            ids[seed] = t.run_id
            ref = mlflow_ref(t)
        assert ref == {"run_id": t.run_id, "experiment": "fian/synthetic", "tracking_uri": store}
    client = MlflowClient(store)
    runs = {s: client.get_run(i) for s, i in ids.items()}
    assert runs[1].info.run_name.startswith("synthetic/fian/train seed 1 ")
    assert runs[None].info.run_name.startswith("synthetic/fian/train 2")  # no seed in the name: as before
    assert [runs[s].data.tags["seed"] for s in (0, 1, None)] == ["0", "1", "0"]
    assert {runs[s].data.tags["fian.group"] for s in (0, 1, None)} == {"synthetic/fian/train"}
    found = client.search_runs([runs[0].info.experiment_id], "tags.`fian.group` = 'synthetic/fian/train' and tags.seed = '1'")
    assert [r.info.run_id for r in found] == [ids[1]]
    assert clean_uri("http://user:secret@mlflow.example:5000/x") == "http://mlflow.example:5000/x"
    assert clean_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


def test_log_dataset_takes_the_stages_hash_instead_of_reading_the_file_again(tmp_path, monkeypatch, store) -> None:
    """The train and evaluate stages hash their inputs once (data_hashes: run key, tags, provenance)
    and hand that hash to log_dataset: a multi-GB split is not read a second time (issue 21 item 3)."""
    import fian.tracking as tracking

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "test.h5"
    data.write_bytes(b"split")
    given = tracking.data_hashes([data])["data_sha256.test.h5"]
    assert given == hashlib.sha256(b"split").hexdigest()

    def no_read(path):  # noqa: ANN001, ANN202
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(tracking, "sha256_file", no_read)
    with Tracker(enabled=True, tracking_uri=store, dataset="hash", variant="fian", stage="evaluate", out="r") as t:
        t.log_dataset("hash/test", data, context="evaluation", sha256=given)
    from mlflow.tracking import MlflowClient

    (inp,) = MlflowClient(store).get_run(t.run_id).inputs.dataset_inputs
    assert inp.dataset.digest == given[:32] and {x.key: x.value for x in inp.tags}["sha256"] == given
    with Tracker(enabled=True, tracking_uri=store, dataset="hash", variant="fian", stage="evaluate", out="r") as t2:
        with pytest.raises(AssertionError, match="read again"):  # without it: hashed here
            t2.log_dataset("hash/test", data, context="evaluation")


@pytest.mark.parametrize("other_job_set_it", [True, False], ids=["raced", "failed"])
def test_the_experiment_kind_tag_set_by_another_job_at_the_same_moment(tmp_path, monkeypatch, store,
                                                                        other_job_set_it) -> None:  # fmt: skip
    """Four jobs through an MLflow server on SQLite: two may insert the experiment's kind tag at
    once and the second gets a UNIQUE constraint error (seen in CI). The job goes on when the tag
    is there now; a failure that left it unset still fails the job."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from fian.tracking import EXPERIMENT_KIND

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    real = MlflowClient.set_experiment_tag

    def racing(self, experiment_id, key, value):
        if other_job_set_it:
            real(self, experiment_id, key, value)  # the other job's insert, just before ours
        raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: experiment_tags.key, "
                              "experiment_tags.experiment_id")  # fmt: skip

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", racing)
    import dataclasses

    cfg = Config()  # a dataset of its own: a new experiment, whose tag is not set yet
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, name=f"race{int(other_job_set_it)}"))
    if not other_job_set_it:
        with pytest.raises(MlflowException, match="UNIQUE constraint"):
            build_tracker(cfg, stage="train").__enter__()
        return
    with build_tracker(cfg, stage="train") as t:
        t.log_metrics({"loss": 0.5}, step=1)
        run_id = t.run_id
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
