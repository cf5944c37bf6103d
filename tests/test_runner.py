"""The pre-imported job runner (fian_pipeline/runner.py, issue 21 item 3).

Real processes throughout: a runner started as the Snakefile starts it, stage commands run as
Snakemake runs them (``python -m fian_pipeline.<stage>`` with ``FIAN_RUNNER`` in the
environment), real signals.  The reference for every check is the same command run as its own
process (``FIAN_RUNNER`` unset): same files bit for bit, same exit status, same streams.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import plain, tiny_config, write_tiny_data

from fian.io import process_alive
from fian_pipeline import runner as R

BIN = Path(sys.executable).parent
PY = str(BIN / "python")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny data and params (MLflow on, a SQLite store in the folder) for a train job."""
    root = tmp_path_factory.mktemp("runner")
    write_tiny_data(root, n_train=12)
    cfg = tiny_config(epochs=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.2),  # the RNG matters
                              tracking=dataclasses.replace(cfg.tracking, enabled=True))  # fmt: skip
    d = cfg.to_dict()
    d.pop("variant")
    (root / "base.yaml").write_text(yaml.safe_dump(plain(d)))
    (root / "fian.yaml").write_text("{}\n")
    return root


def _train_cmd(root: Path, name: str, *extra: str) -> list[str]:
    return [PY, "-m", "fian_pipeline.train", "--params", str(root / "base.yaml"), str(root / "base.yaml"),
            str(root / "fian.yaml"), "--data", str(root / "data"), "--text", str(root / "text"),
            "--out", str(root / "results" / name), "--device", "cpu", *extra]  # fmt: skip


def _env(root: Path, runner: dict[str, str] | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (R.ENV, R.PID_ENV, R.CHILD_ENV)}
    env.update({"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
                "OMP_NUM_THREADS": "2", **(runner or {}), **extra})  # fmt: skip
    return env


class Runner:
    """A runner process started by :func:`fian_pipeline.runner.start` (as the Snakefile does),
    this test process's environment left as it was."""

    def __init__(self, log: Path) -> None:
        # started as Snakemake starts it: no thread count in its environment (each job brings its own)
        saved = {k: os.environ.get(k) for k in (R.ENV, R.PID_ENV, *R.THREAD_VARS)}
        try:
            for k in R.THREAD_VARS:
                os.environ.pop(k, None)
            self.proc = R.start(PY, log)
            self.env = {R.ENV: os.environ[R.ENV], R.PID_ENV: os.environ[R.PID_ENV]}
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.log = log

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def default_threads(self) -> int:
        found = re.search(r"torch's default (\d+) threads", self.text())
        assert found, self.text()
        return int(found.group(1))

    def jobs(self) -> list[int]:
        return [int(p) for p in re.findall(r"job (\d+): fian_pipeline\.", self.text())]

    def wait_for_job(self, n: int, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.jobs()) >= n:
                return self.jobs()[n - 1]
            time.sleep(0.05)
        raise AssertionError(f"the runner never started job {n}:\n{self.text()}")

    def close(self) -> None:
        R.stop(self.proc)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = Runner(tmp_path_factory.mktemp("runner-log") / "runner.log")
    yield r
    r.close()


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.02)
    return False


def test_a_job_through_the_runner_is_the_job_in_its_own_process(tiny, runner) -> None:
    """A train job (MLflow on, dropout: the RNG matters) forked by the runner writes the same
    checkpoint, history and metrics, bit for bit, as the same command as its own process."""
    from fian.train import load_checkpoint

    one = {"OMP_NUM_THREADS": "1"}  # not the runner's own default (torch's: one per core)
    own = subprocess.run(_train_cmd(tiny, "own"), env=_env(tiny, None, **one), capture_output=True, text=True, timeout=300)
    assert own.returncode == 0, own.stderr[-3000:]
    n = len(runner.jobs())
    forked = subprocess.run(_train_cmd(tiny, "forked"), env=_env(tiny, runner.env, **one), capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert forked.returncode == 0, forked.stderr[-3000:]
    assert "fian runner" not in forked.stderr  # no "declined" / "not reachable": it ran in the runner
    pid = runner.jobs()[n]  # the runner's log names the job and its exit
    assert re.search(rf"job {pid}: fian_pipeline\.train --params .*--out \S*results/forked", runner.text())
    assert re.search(rf"job {pid}: exit 0 after", runner.text()), runner.text()
    # the job's own streams: the epoch lines on its stdout, the log on its stderr
    assert re.findall(r"epoch \d/2 loss", forked.stdout) == re.findall(r"epoch \d/2 loss", own.stdout) != []
    assert "fian.train" in forked.stderr
    a, b = (load_checkpoint(tiny / "results" / name / "checkpoint.pt") for name in ("own", "forked"))
    for part in ("model", "best_model"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in b["history"]]
    assert (tiny / "results/own/train_metrics.json").read_text() == (tiny / "results/forked/train_metrics.json").read_text()
    # the job's thread count (OMP_NUM_THREADS, as Snakemake sets it from a rule's threads) is the
    # job's, not the runner's (train_info.json's provenance records torch's count)
    device = [json.loads((tiny / f"results/{name}/train_info.json").read_text())["provenance"]["device"]
              for name in ("own", "forked")]  # fmt: skip
    assert device[0]["threads"] == device[1]["threads"] == 1, device
    assert runner.default_threads() > 1 or len(os.sched_getaffinity(0)) == 1  # else 1 would say nothing
    # each its own FINISHED MLflow run in the one store, named by its own command
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tiny / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fian/tiny").experiment_id])
    outs = {Path(r.data.tags["fian.out"]).name: r for r in runs if "fian.out" in r.data.tags}
    assert outs["own"].info.status == outs["forked"].info.status == "FINISHED"
    assert outs["forked"].data.tags["mlflow.source.name"].endswith("train.py")


@pytest.mark.parametrize(
    ("argv", "code", "stream", "needle"),
    [
        (["--help"], 0, "stdout", "usage: fian evaluate"),
        (["--params", "nosuch.yaml", "--data", "d", "--text", "t", "--checkpoint", "c", "--split", "test", "--out", "o"],
         1, "stderr", "error: nosuch.yaml"),
        (["--params", "p.yaml"], 2, "stderr", "the following arguments are required"),
    ],
    ids=["help", "stage-error", "usage-error"],
)  # fmt: skip
def test_exit_status_and_streams_are_the_commands(tiny, runner, argv, code, stream, needle) -> None:
    cmd = [PY, "-m", "fian_pipeline.evaluate", *argv]
    own = subprocess.run(cmd, cwd=tiny, env=_env(tiny, None), capture_output=True, text=True, timeout=120)
    n = len(runner.jobs())
    forked = subprocess.run(cmd, cwd=tiny, env=_env(tiny, runner.env), capture_output=True, text=True, timeout=120)
    assert own.returncode == forked.returncode == code, (own.stderr[-2000:], forked.stderr[-2000:])
    assert needle in getattr(forked, stream) and getattr(own, stream) == getattr(forked, stream)
    assert len(runner.jobs()) == n + 1  # it did run in the runner


def _start_long(tiny: Path, runner: Runner, name: str) -> tuple[subprocess.Popen, int]:
    """A train job of many epochs through the runner; returns (its command, the child's pid) once
    the first epoch is done."""
    n = len(runner.jobs())
    proc = subprocess.Popen(_train_cmd(tiny, name, "--set", "train.epochs=500"), env=_env(tiny, runner.env),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    pid = runner.wait_for_job(n + 1)
    line = proc.stdout.readline()
    assert "epoch 1/500" in line, line
    return proc, pid


@pytest.mark.slow
def test_signals_reach_the_job_once_and_a_killed_command_kills_its_job(tiny, runner) -> None:
    from mlflow.tracking import MlflowClient

    # SIGTERM (Snakemake cancelling a job, SLURM's time limit) to the command: the job unwinds as
    # a process of its own does -- KeyboardInterrupt, MLflow run KILLED, its traceback, exit 1
    n = len(runner.jobs())
    proc = subprocess.Popen(_train_cmd(tiny, "sigterm", "--set", "train.epochs=500"), env=_env(tiny, runner.env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    pid = runner.wait_for_job(n + 1)
    assert "epoch 1/500" in proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    err = proc.stderr.read()
    assert err.count("KeyboardInterrupt: signal 15") == 1, err[-3000:]  # passed on once
    assert _gone(pid) and f"job {pid}: exit 1" in runner.text()
    client = MlflowClient(f"sqlite:///{tiny / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fian/tiny").experiment_id])
    [run] = [r for r in runs if r.data.tags.get("fian.out", "").endswith("sigterm")]
    assert run.info.status == "KILLED"
    # the same signal to a command running the stage itself: the same exit status
    own = subprocess.Popen(_train_cmd(tiny, "sigterm-own", "--set", "train.epochs=500"), env=_env(tiny, None),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert "epoch 1/500" in own.stdout.readline()
    own.send_signal(signal.SIGTERM)
    assert own.wait(timeout=60) == 1
    assert own.stderr.read().count("KeyboardInterrupt: signal 15") == 1

    # SIGKILL to the command (a killed job, a killed process group): its job dies with it
    proc, pid = _start_long(tiny, runner, "sigkill")
    proc.kill()
    proc.wait(timeout=30)
    assert _gone(pid, 5), f"job {pid} outlived its command"
    assert f"job {pid}: its command ended before it" in runner.text()

    # the runner still serves the next job
    done = subprocess.run([PY, "-m", "fian_pipeline.evaluate", "--help"], env=_env(tiny, runner.env),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "usage" in done.stdout


def test_a_runner_declines_what_it_cannot_run_the_same_and_the_job_runs_itself(tiny, runner) -> None:
    cmd = [PY, "-m", "fian_pipeline.evaluate", "--params", "nosuch.yaml", "--data", "d", "--text", "t",
           "--checkpoint", "c", "--split", "test", "--out", "o"]  # fmt: skip
    # an OpenMP setting that libgomp reads when it loads, unlike the runner's
    n = len(runner.jobs())
    p = subprocess.run(cmd, cwd=tiny, env=_env(tiny, runner.env, GOMP_SPINCOUNT="123"), capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 1 and "error: nosuch.yaml" in p.stderr
    assert "fian runner declined (a library setting differs from the runner's: GOMP_SPINCOUNT)" in p.stderr
    assert len(runner.jobs()) == n  # it did not run in the runner
    # no runner listening (gone): the job runs itself
    p = subprocess.run(cmd, cwd=tiny, env=_env(tiny, {R.ENV: "nosuch", R.PID_ENV: "999999999"}), capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 1 and "error: nosuch.yaml" in p.stderr and "not reachable" in p.stderr


@pytest.mark.slow
def test_an_edited_source_file_is_not_run_stale_and_a_killed_runner_takes_its_jobs(tiny, tmp_path, monkeypatch) -> None:
    """The runner and its jobs import fian_pipeline from a copy (PYTHONPATH; the checkout's own
    files are never touched: other tests' runners watch them); a file of the copy edited after the
    runner imported it: the job runs itself, with the edited code.  Then the runner is killed."""
    import shutil

    copy = tmp_path / "code"
    shutil.copytree(Path(R.__file__).parent, copy / "fian_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", str(copy))
    own = Runner(tmp_path / "runner.log")
    try:
        cmd = [PY, "-m", "fian_pipeline.evaluate", "--help"]
        first = subprocess.run(cmd, cwd=tiny, env=_env(tiny, own.env), capture_output=True, text=True, timeout=120)
        assert first.returncode == 0 and "fian runner" not in first.stderr and len(own.jobs()) == 1, first.stderr
        assert f"job {own.jobs()[0]}: exit 0" in own.text()
        src = copy / "fian_pipeline/evaluate.py"
        text, st = src.read_text(), src.stat()
        src.write_text(text.replace('"""Stage ``evaluate``', '"""EDITED. Stage ``evaluate``', 1))
        edited = subprocess.run(cmd, cwd=tiny, env=_env(tiny, own.env), capture_output=True, text=True, timeout=120)
        assert edited.returncode == 0 and "EDITED" in edited.stdout, edited.stdout[-2000:]
        assert f"fian runner declined ({src} changed since the runner started)" in edited.stderr
        assert len(own.jobs()) == 1
        src.write_text(text)  # as it was when the runner imported it: its jobs are the runner's again
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))

        # a killed runner (its Snakemake's process group killed) takes its jobs with it
        proc, pid = _start_long(tiny, own, "runner-killed")
        own.proc.kill()
        assert _gone(pid, 5), f"job {pid} outlived its runner"
        assert proc.wait(timeout=30) == 1  # the command says so and fails: Snakemake sees a failed job
    finally:
        own.close()


def _raw_request(name: str, payload: bytes, fds: list[int]) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect("\0fian-runner-" + name)
        socket.send_fds(s, [struct.pack("!I", len(payload))], fds)
        s.sendall(payload)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


def test_malformed_requests_run_nothing_and_the_runner_serves_on(tiny, runner) -> None:
    name = runner.env[R.ENV]
    n = len(runner.jobs())
    assert _raw_request(name, b"{not json", [0, 1, 2]) == b""
    reply = _raw_request(name, json.dumps({"module": "os", "argv": [], "cwd": "/", "env": {}}).encode(), [0, 1, 2])
    assert reply[:1] == b"D" and b"not a stage module: os" in reply
    reply = _raw_request(name, json.dumps({"module": "fian_pipeline.evaluate", "argv": [1]}).encode(), [0, 1, 2])
    assert reply[:1] == b"D" and b"malformed" in reply
    assert len(runner.jobs()) == n
    ok = subprocess.run([PY, "-m", "fian_pipeline.evaluate", "--help"], env=_env(tiny, runner.env),
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0 and len(runner.jobs()) == n + 1


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_a_process_of_another_user_is_declined(runner) -> None:
    """The abstract socket has no file permissions: the runner checks the caller's uid itself."""
    name = runner.env[R.ENV]
    code = (
        "import json, os, socket, struct\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(30)\n"
        f"s.connect('\\0fian-runner-{name}')\n"
        "p = json.dumps({'module': 'fian_pipeline.evaluate', 'argv': ['--help'], 'cwd': '/', 'env': {}}).encode()\n"
        "socket.send_fds(s, [struct.pack('!I', len(p))], [0, 1, 2]); s.sendall(p)\n"
        "print(s.recv(4096))\n"
    )
    n = len(runner.jobs())
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "another user (uid 65534)" in p.stdout
    assert len(runner.jobs()) == n
