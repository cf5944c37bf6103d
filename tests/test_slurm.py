"""The SLURM profile, for real: a one-node SLURM cluster on loopback runs a small workflow.

Recipe: /work/shared/notes/environment.md (munge, slurm.conf, `slurmctld -D -i`, `slurmd -D`, and
the status-command settings of workflow/profiles/slurm that avoid the sacct hang without
accounting).  The daemons are started by this test and stopped by their PIDs in a finally.
Needs root and Debian's slurmctld slurmd slurm-client munge (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NEEDED = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "munged", "munge", "unmunge")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start munged/slurmctld/slurmd"
    missing = [b for b in NEEDED if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        return f"missing binaries {missing} (apt-get install slurmctld slurmd slurm-client munge)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    if enc.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10).returncode == 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@contextlib.contextmanager
def slurm_cluster(tmp: Path) -> Iterator[dict[str, str]]:
    """munged (if none runs yet), slurmctld and slurmd on 127.0.0.1; yields the env for clients."""
    started: list[subprocess.Popen[bytes]] = []
    conf: Path | None = None
    backup: Path | None = None
    try:
        if not _munge_works():
            run_dir = Path("/run/munge")
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            started.append(subprocess.Popen(["/usr/sbin/munged", "-F"], user="munge", group="munge"))
            deadline = time.time() + 10
            while not _munge_works():
                assert time.time() < deadline, "munged did not come up"
                time.sleep(0.2)
        host = socket.gethostname()
        state, spool, logs = tmp / "state", tmp / "spool", tmp / "log"
        for d in (state, spool, logs):
            d.mkdir()
        # the default location: job steps (srun inside the batch job) find it without SLURM_CONF;
        # an existing file is put back afterwards
        conf = Path("/etc/slurm/slurm.conf")
        conf.parent.mkdir(parents=True, exist_ok=True)
        if conf.exists():
            backup = tmp / "slurm.conf.orig"
            shutil.copy2(conf, backup)
        conf.write_text(
            "\n".join(
                [
                    "ClusterName=fiantest",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    f"StateSaveLocation={state}",
                    f"SlurmdSpoolDir={spool}",
                    f"SlurmctldPidFile={tmp}/slurmctld.pid",
                    f"SlurmdPidFile={tmp}/slurmd.pid",
                    f"SlurmctldLogFile={logs}/slurmctld.log",
                    f"SlurmdLogFile={logs}/slurmd.log",
                    f"NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=20000 State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{BIN}:{os.environ['PATH']}"}
        started.append(subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-i", "-f", str(conf)], env=env))
        started.append(subprocess.Popen(["/usr/sbin/slurmd", "-D", "-f", str(conf)], env=env))
        deadline = time.time() + 30
        while True:
            for p in started:
                assert p.poll() is None, f"a SLURM daemon exited; logs in {logs}: " + " ".join(
                    f.read_text()[-1500:] for f in logs.glob("*.log")
                )
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc"):
                break
            assert time.time() < deadline, f"node not idle: {out.stdout} {out.stderr}"
            time.sleep(0.5)
        yield env
    finally:
        for p in reversed(started):
            _stop(p)
        if backup is not None:
            shutil.copy2(backup, "/etc/slurm/slurm.conf")
        elif conf is not None:
            conf.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(f: Any) -> Iterator[None]:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)


SNAKEFILE = """
localrules: all

rule all:
    input: "combined.txt"

rule part:
    output: "part_{i}.txt"
    resources: mem_mb=100, runtime=5
    shell: "echo job=$SLURM_JOB_ID part={wildcards.i} > {output}"

rule combine:
    input: expand("part_{i}.txt", i=[1, 2])
    output: "combined.txt"
    resources: mem_mb=100, runtime=5
    shell: "cat {input} > {output}; echo combine=$SLURM_JOB_ID >> {output}"
"""


# the loopback cluster answers at once: poll it every second, not every 10 s (the profile's values
# are for a real cluster's scheduler)
FAST_POLL = ["--seconds-between-status-checks", "1", "--slurm-init-seconds-before-status-checks", "1"]


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_slurm_profile_runs_a_workflow(tmp_path: Path) -> None:
    work = tmp_path / "wf"
    work.mkdir()
    (work / "Snakefile").write_text(SNAKEFILE)
    # one SLURM test at a time on this machine (they share /etc/slurm/slurm.conf and munged)
    with open("/tmp/fian-slurm-test.lock", "w") as lock, _locked(lock), slurm_cluster(tmp_path) as env:
        proc = subprocess.run(
            [str(BIN / "snakemake"), "--profile", str(ROOT / "workflow/profiles/slurm"), "--jobs", "3", *FAST_POLL],
            cwd=work, env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        # the project's own workflow: a download job stays on the machine that runs snakemake (a
        # cluster's login node, the only one with internet; registry Stage.local -> `localrule`), the
        # job after it goes to SLURM
        proj = _download_project(tmp_path / "proj")
        with _serving(proj / "served") as port:
            _point_sources_at(proj, port)
            wf = subprocess.run(
                [str(BIN / "snakemake"), "data/interim/toy/annotations", "--profile", "workflow/profiles/slurm",
                 "--jobs", "2", "--configfile", "workflow/config/toy.yaml", *FAST_POLL],
                cwd=proj, env=env, capture_output=True, text=True, timeout=240,
            )  # fmt: skip
        out = wf.stdout + wf.stderr
        assert wf.returncode == 0, out[-4000:]
    text = (work / "combined.txt").read_text().splitlines()
    job_ids = [line.split()[0].split("=")[1] for line in text[:2]] + [text[2].split("=")[1]]
    assert all(j.isdigit() for j in job_ids), text  # each rule ran inside a SLURM job
    assert len(set(job_ids)) == 3
    assert [line.split()[1] for line in text[:2]] == ["part=1", "part=2"]
    assert (proj / "data/interim/toy/annotations/train.parquet").is_file()
    assert re.search(r"^localrule download_annotations:", out, re.M), out[-4000:]
    submitted = re.findall(r"has been submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/rule_(\w+)/", out)
    assert submitted == ["annotations"], (submitted, out[-4000:])


TOY = {
    "dataset": {
        "name": "toy", "format": "activitynet", "feature_layout": "activitynet_c3d", "feature_dim": 8,
        "splits": {"train": ["train.json"], "test": ["test.json"]},  # test: the eval split the config plans
        "annotation_sources": [{"name": f"{s}.json", "url": f"http://127.0.0.1:PORT/{s}.json", "sha256": None}
                               for s in ("train", "test")],
    },
    "features": {"num_steps": 8}, "model": {"window_sizes": [2, 4], "stride_ratio": 0.5},
    "loss": {"alpha": 0.005}, "train": {"lr": 1.0e-3, "batch_size": 4},
}  # fmt: skip


def _download_project(proj: Path) -> Path:
    """The workflow files and a dataset `toy` whose annotations come from a loopback HTTP server."""
    import json

    import yaml

    proj.mkdir()
    shutil.copy(ROOT / "Snakefile", proj / "Snakefile")
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    for d in ("workflow", "params"):
        shutil.copytree(ROOT / d, proj / d)
    (proj / "workflow/config/toy.yaml").write_text(yaml.safe_dump({"datasets": {"toy": {"source": "download", "variants": ["fian"]}}}))
    served = proj / "served"
    served.mkdir()
    for split, ids in (("train", range(3)), ("test", range(3, 5))):  # no video in both (the annotations stage checks)
        ann = {f"v{i}": {"duration": 10.0, "timestamps": [[1.0, 4.0]], "sentences": ["a man opens a door"]} for i in ids}
        (served / f"{split}.json").write_text(json.dumps(ann))
    return proj


def _point_sources_at(proj: Path, port: int) -> None:
    import copy
    import hashlib

    import yaml

    toy = copy.deepcopy(TOY)
    for src in toy["dataset"]["annotation_sources"]:
        src["url"] = src["url"].replace("PORT", str(port))
        src["sha256"] = hashlib.sha256((proj / "served" / src["name"]).read_bytes()).hexdigest()
    (proj / "params/datasets/toy.yaml").write_text(yaml.safe_dump(toy))


@contextlib.contextmanager
def _serving(folder: Path) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 serving ``folder`` (a thread of this process)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
