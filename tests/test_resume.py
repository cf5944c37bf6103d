"""Resume that the workflow does by itself (issue 12 item 2).

A real ``fian train --state ...`` process is killed mid-training (SIGKILL, SIGTERM) and the same
command run again: the final checkpoint and metrics equal those of an uninterrupted run, and in
MLflow the killed attempt ends KILLED while the final attempt holds epochs 1..E once each.
In-process tests cover the choice of the starting point: a changed config never resumes,
raising only ``train.epochs`` continues, a state holding more epochs is kept aside, ``--restart``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from train_helpers import plain, tiny_config, write_tiny_data

from fian.resume import TrainState, code_version, run_key
from fian.train import load_checkpoint

BIN = Path(sys.executable).parent
EPOCHS = 4


def _params(folder: Path, cfg) -> list[str]:
    d = cfg.to_dict()
    d.pop("variant")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(plain(d)))
    (folder / "tiny.yaml").write_text("{}\n")
    (folder / "fian.yaml").write_text("{}\n")
    return [str(folder / n) for n in ("base.yaml", "tiny.yaml", "fian.yaml")]


# --------------------------------------------------------------------------------------------
# real processes, real signals
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Tiny data (long enough epochs to be killed in), params with MLflow on, and one
    uninterrupted reference run."""
    root = tmp_path_factory.mktemp("resume")
    data, text = write_tiny_data(root, n_train=12)  # 24 queries, batch 8: 3 steps per epoch
    cfg = tiny_config(epochs=EPOCHS)
    import dataclasses

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.2),  # RNG matters
                              tracking=dataclasses.replace(cfg.tracking, enabled=True))  # fmt: skip
    params = _params(root / "params", cfg)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    p = _run(root, params, data, text, "ref")
    assert p.returncode == 0, p.stderr[-3000:]
    return root, params, data, text, uri


def _cmd(params, data, text, name: str) -> list[str]:
    return [str(BIN / "fian"), "train", "--params", *params, "--data", str(data), "--text", str(text),
            "--out", f"results/{name}", "--state", f"state/{name}", "--device", "cpu"]  # fmt: skip


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}


def _run(root, params, data, text, name) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(params, data, text, name), cwd=root, env=_env(root), capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _run_and_kill(root, params, data, text, name, sig: int, at_epoch: int) -> tuple[int, str]:
    """Start the command; send ``sig`` as soon as its log shows epoch ``at_epoch`` done."""
    proc = subprocess.Popen(_cmd(params, data, text, name), cwd=root, env=_env(root), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)  # fmt: skip
    watchdog = threading.Timer(600, proc.kill)  # bounded in time whatever happens
    watchdog.start()
    seen, sent = [], False
    try:
        for line in proc.stderr:
            seen.append(line)
            if not sent and f"epoch {at_epoch:>3}/{EPOCHS}" in line:
                assert proc.poll() is None
                proc.send_signal(sig)  # right after the epoch's line: maybe while its checkpoint is written
                sent = True
        rc = proc.wait(timeout=120)
    finally:
        watchdog.cancel()
    assert sent, "".join(seen)[-3000:]
    return rc, "".join(seen)


def _runs(uri: str, state_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fian/tiny")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`fian.state_dir` = '{state_dir.resolve()}'",
                              order_by=["attributes.start_time ASC"])  # fmt: skip
    return client, runs


def _same_training(ref: Path, got: Path) -> None:
    """Checkpoint, history and metrics equal (bit for bit on CPU) but for the wall times."""
    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(got / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS and a["best_epoch"] == b["best_epoch"]
    for part in ("model", "best_model"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for i, s in a["optimizer"]["state"].items():
        assert all(torch.equal(s[m], b["optimizer"]["state"][i][m]) for m in ("exp_avg", "exp_avg_sq")), i
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in b["history"]]
    ha, hb = pd.read_csv(ref / "history.csv"), pd.read_csv(got / "history.csv")
    pd.testing.assert_frame_equal(ha.drop(columns="time_s"), hb.drop(columns="time_s"))
    ma, mb = (json.loads((d / "train_metrics.json").read_text()) for d in (ref, got))
    assert ma == mb  # no wall-clock figure among the metrics (train_time_s is in train_info.json)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_training_resumes_by_the_same_command(project, sig) -> None:
    root, params, data, text, uri = project
    name = f"killed-{sig.name}"
    rc, log = _run_and_kill(root, params, data, text, name, sig, at_epoch=2)
    assert rc != 0, log[-2000:]
    assert not (root / f"results/{name}/checkpoint.pt").exists()  # written only when training ends
    states = [p for p in (root / f"state/{name}").glob("*.pt") if not p.name.startswith(".")]  # no temp files
    assert len(states) == 1 and 1 <= load_checkpoint(states[0])["epoch"] < EPOCHS, states

    again = _run(root, params, data, text, name)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming run" in again.stderr and "from epoch 0" not in again.stderr, again.stderr[-3000:]
    _same_training(root / "results/ref", root / f"results/{name}")
    assert not [p for p in (root / f"state/{name}").iterdir() if p.name.startswith(".") and p.name != ".lock"]

    # MLflow: the killed attempt KILLED (SIGTERM: by the stage; SIGKILL: by the next attempt), the
    # final one FINISHED, linked to it, holding every epoch once with the reference's values
    client, runs = _runs(uri, root / f"state/{name}")
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"], [(r.info.run_id, r.info.status) for r in runs]
    killed, final = runs
    assert final.data.tags["fian.resumed_from"] == killed.info.run_id
    assert final.data.tags["fian.attempt"] == "2" and killed.data.tags["fian.attempt"] == "1"
    if sig == signal.SIGKILL:
        assert final.info.run_id in killed.data.tags["fian.ended_by"]
    _, ref_runs = _runs(uri, root / "state/ref")
    ref_loss = [(m.step, m.value) for m in client.get_metric_history(ref_runs[0].info.run_id, "loss")]
    got_loss = [(m.step, m.value) for m in client.get_metric_history(final.info.run_id, "loss")]
    assert sorted(got_loss) == sorted(ref_loss) and [s for s, _ in sorted(got_loss)] == list(range(1, EPOCHS + 1))
    killed_steps = [m.step for m in client.get_metric_history(killed.info.run_id, "loss")]
    assert sorted(killed_steps) == list(range(1, len(killed_steps) + 1)) and len(killed_steps) < EPOCHS


# --------------------------------------------------------------------------------------------
# choosing the starting point (in process, tracking off)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("choose")
    data, text = write_tiny_data(root, n_train=3)
    return root, data, text


def _train(root, data, text, cfg, *extra: str, name: str = "a") -> tuple[int, Path, Path]:
    from fian_pipeline import train
    from fian_pipeline.common import run_stage

    params = _params(root / f"params-{cfg.train.epochs}-{cfg.train.lr}", cfg)
    out, state = root / "results" / name, root / "state" / name
    code = run_stage(train.main, ["--params", *params, "--data", str(data), "--text", str(text),
                                  "--out", str(out), "--state", str(state), "--device", "cpu", *extra])  # fmt: skip
    return code, out, state


def test_epochs_raised_continue_config_changed_starts_fresh_and_nothing_later_is_overwritten(small, caplog) -> None:
    root, data, text = small
    caplog.set_level("INFO", logger="fian.resume")
    assert _train(root, data, text, tiny_config(epochs=1))[0] == 0
    code, out, state = _train(root, data, text, tiny_config(epochs=2))  # only train.epochs raised
    assert code == 0 and "resuming run" in caplog.text and "after epoch 1" in caplog.text
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1, 2]
    key = next(state.glob("*.pt")).stem
    # the key ignores train.epochs only
    assert len(list(state.glob("*.pt"))) == 1

    caplog.clear()
    code, out, _ = _train(root, data, text, tiny_config(epochs=2, lr=1e-3))  # another run: fresh
    assert code == 0 and "starting from epoch 0" in caplog.text and "resuming" not in caplog.text
    assert "holds another run" in caplog.text  # the output checkpoint of the other run is named, then replaced
    assert len(list(state.glob("*.pt"))) == 2 and (state / f"{key}.pt").is_file()

    caplog.clear()
    code, out, _ = _train(root, data, text, tiny_config(epochs=1))  # fewer epochs than the state holds
    assert code == 0 and "starting from epoch 0" in caplog.text
    kept = load_checkpoint(state / f"{key}.epoch2.pt")  # the 2-epoch state is kept, not overwritten
    assert kept["epoch"] == 2 and load_checkpoint(state / f"{key}.pt")["epoch"] == 1
    caplog.clear()
    code, out, _ = _train(root, data, text, tiny_config(epochs=2))  # back to 2: the kept state, nothing trained
    assert code == 0 and f"{key}.epoch2.pt after epoch 2" in caplog.text
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2

    caplog.clear()
    code, out, _ = _train(root, data, text, tiny_config(epochs=2), "--restart")
    assert code == 0 and "--restart: deleting" in caplog.text and "starting from epoch 0" in caplog.text
    assert not (state / f"{key}.epoch2.pt").exists()


def test_run_key_covers_config_data_and_code(tmp_path) -> None:
    cfg = tiny_config(epochs=3).to_dict()
    data = {"data_sha256.train.h5": "a" * 64}
    k = run_key(cfg, data, "code1")
    assert run_key(tiny_config(epochs=30).to_dict(), data, "code1") == k  # train.epochs is not part of it
    assert run_key(tiny_config(epochs=3, lr=1e-2).to_dict(), data, "code1") != k
    assert run_key(cfg, {"data_sha256.train.h5": "b" * 64}, "code1") != k
    assert run_key(cfg, data, "code2") != k
    # the code version follows the training sources
    src = tmp_path / "fian"
    for rel in ("train.py", "losses.py", "evaluate.py", "inference.py", "metrics.py", "distributed.py",
                "model/fian.py", "data/dataset.py", "data/batch.py"):  # fmt: skip
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x = 1\n")
    v1 = code_version(src)
    (src / "model/fian.py").write_text("x = 2\n")
    assert code_version(src) != v1


def test_a_second_job_on_the_same_state_is_refused(tmp_path) -> None:
    from fian.resume import StateBusyError

    with TrainState(tmp_path / "s", "k"):
        holder = subprocess.run(
            [sys.executable, "-c", "import sys; from fian.resume import TrainState\n"
             f"with TrainState({str(tmp_path / 's')!r}, 'k'): pass"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert holder.returncode != 0 and "another training job uses this state folder" in holder.stderr
        with pytest.raises(StateBusyError, match=f"pid {os.getpid()}"):
            TrainState(tmp_path / "s", "k").__enter__()
    with TrainState(tmp_path / "s", "k"):  # released
        pass


_STUCK_EVALUATE = """
import sys, time
import fian.evaluate
def stuck(*a, **k):
    print("evaluating", flush=True); time.sleep(600)
fian.evaluate.evaluate = stuck  # the stage imports it when it runs: it blocks mid-evaluation
from fian_pipeline.common import run_stage
from fian_pipeline.evaluate import main
sys.exit(run_stage(main, sys.argv[1:]))
"""


def test_evaluate_cancelled_by_sigterm_ends_its_run_killed_and_writes_nothing(project) -> None:
    """SLURM at a time limit and Snakemake on Ctrl-C send SIGTERM: the evaluate stage unwinds (its
    MLflow run KILLED at once, not left RUNNING) and leaves no metrics, predictions or temp."""
    from mlflow.tracking import MlflowClient

    from fian.io import TEMP_MARK

    root, params, data, text, uri = project
    out = root / "results" / "eval-sigterm"
    argv = ["--params", *params, "--data", str(data), "--text", str(text), "--checkpoint",
            str(root / "results/ref/checkpoint.pt"), "--split", "val", "--out", str(out), "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", _STUCK_EVALUATE, *argv], cwd=root, env=_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "evaluating", proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc != 0
    assert not [p for p in out.rglob("*") if p.name.startswith(("metrics_", "predictions_", "info_")) or TEMP_MARK in p.name]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fian/tiny")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`fian.out` = '{out.resolve()}'")
    assert [r.info.status for r in runs] == ["KILLED"]


def test_a_killed_writers_temp_of_an_older_run_key_is_removed(tmp_path) -> None:
    """A job SIGKILLed while writing its state; the code changes before the rerun (a new run key,
    a fresh start): the old key's temp must not stay in the folder forever; its states stay."""
    import signal

    folder = tmp_path / "s"
    job = ("import sys, time\nfrom fian.io import atomic_path\nfrom fian.resume import TrainState\n"
           f"with TrainState({str(folder)!r}, 'oldkey') as st:\n"
           "    st.live.write_bytes(b'epoch 1')\n"
           "    with atomic_path(st.live) as tmp:\n"
           "        tmp.write_bytes(b'half of epoch 2'); print(tmp, flush=True); time.sleep(600)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", job], stdout=subprocess.PIPE, text=True)
    try:
        temp = Path(proc.stdout.readline().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert temp.is_file() and temp.name.startswith(".oldkey.pt.")
    with TrainState(folder, "newkey"):
        assert not temp.exists()
        assert (folder / "oldkey.pt").read_bytes() == b"epoch 1"  # a state, not a temp: kept


# --------------------------------------------------------------------------------------------
# through a real Snakemake run: SIGKILL the whole process group mid-training, rerun
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_snakemake_run_killed_mid_training_resumes_on_rerun(tmp_path) -> None:
    from test_snakemake import SMALL, _merge, _project, _snakemake  # the demo project made tiny

    proj = _project(tmp_path)
    syn = proj / "params/datasets/synthetic.yaml"
    epochs = 6
    syn.write_text(yaml.safe_dump(_merge(yaml.safe_load(syn.read_text()), {**SMALL, "train": {"epochs": epochs, "batch_size": 16}})))
    target = "results/synthetic/fian/train_metrics.json"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "--profile", "workflow/profiles/local", "--cores", "2", target]
    proc = subprocess.Popen(cmd, cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    log_file = proj / "logs/train/synthetic-fian.log"
    deadline = time.monotonic() + 600
    try:
        while not (log_file.is_file() and f"epoch   2/{epochs}" in log_file.read_text(errors="replace")):
            assert proc.poll() is None, "snakemake ended before training reached epoch 2"
            assert time.monotonic() < deadline, "training did not reach epoch 2 in 600 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its jobs: the node is gone
        proc.wait(timeout=60)
    state = proj / "state/train/synthetic/fian"
    assert not (proj / "results/synthetic/fian/checkpoint.pt").exists()
    states = [p for p in state.glob("*.pt") if not p.name.startswith(".")]  # a killed write leaves a temp file
    assert [load_checkpoint(p)["epoch"] for p in states] in ([1], [2])

    _snakemake(proj, "--unlock")
    _snakemake(proj, target)  # the same command again
    rerun_log = log_file.read_text()
    assert "resuming run" in rerun_log and "starting from epoch 0" not in rerun_log, rerun_log[-3000:]
    # the same training, uninterrupted, by the stage command itself, with the job's thread count
    # (Snakemake's OMP_NUM_THREADS: the rule's threads capped by --cores; train_info.json records it)
    threads = json.loads((proj / "results/synthetic/fian/train_info.json").read_text())["provenance"]["device"]["threads"]
    env = {**env, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    ref = subprocess.run(
        [sys.executable, "-m", "fian_pipeline.train", "--params", "params/base.yaml", "params/datasets/synthetic.yaml",
         "params/variants/fian.yaml", "--data", "data/processed/synthetic", "--text", "data/interim/synthetic/text",
         "--out", "ref", "--state", "state-ref", "--device", "cpu"],
        cwd=proj, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-3000:]
    a, b = load_checkpoint(proj / "ref/checkpoint.pt"), load_checkpoint(proj / "results/synthetic/fian/checkpoint.pt")
    assert a["epoch"] == b["epoch"] == epochs
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["best_model"][k], b["best_model"][k]) for k in a["best_model"])
    hist = pd.read_csv(proj / "results/synthetic/fian/history.csv")
    assert list(hist["epoch"]) == list(range(1, epochs + 1))
    pd.testing.assert_frame_equal(pd.read_csv(proj / "ref/history.csv").drop(columns="time_s"), hist.drop(columns="time_s"))
