"""The rehearsal's cost: the paper's whole experiment matrix (workflow/config/paper-mini.yaml) timed.

Copies the workflow (Snakefile, workflow/, params/) to a fresh folder, runs

    snakemake --profile workflow/profiles/local --cores 2 --jobs 4 --set-threads train=1 evaluate=1 \
        --configfile workflow/config/paper-mini.yaml

with a fresh MLflow store (sqlite in the folder), and prints one table: per rule the jobs and
their summed wall time (from Snakemake's log: the start and finish stamps of every job, 1 s
resolution), then the matrix's wall time and how much of the job time the training loop itself
took (``train_time_s`` of every ``train_info.json``: the epochs, validation included).  The
rest -- interpreter and library start-up, data stages, MLflow, checkpoints, evaluation, tables --
is "outside training".

    PYTHONPATH=$PWD nice .venv/bin/python -m bench.rehearsal [--keep DIR] [--cores 2] [--jobs 4]
    python -m bench.rehearsal --checkout /path/to/before --checkout .      # before/after, one run

Needs the project's venv (snakemake, torch, mlflow) on PATH or beside ``sys.executable``; with
``--checkout PATH`` (repeatable) the matrix runs on that checkout's files with ITS ``.venv``
(``make install`` there), one checkout after the other, and a summary table compares them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "workflow/config/paper-mini.yaml"
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def copy_project(dest: Path, root: Path = ROOT) -> Path:
    """The files a workflow run needs (no data, results or stores), from the checkout ``root``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml", ".gitignore", ".dvcignore"):
        if (root / name).exists():
            shutil.copy(root / name, dest / name)
    for name in ("workflow", "params"):
        shutil.copytree(root / name, dest / name)
    shutil.copy(root / "params.yaml", dest / "params.yaml")
    return dest


def job_times(log: str) -> dict[str, list[float]]:
    """rule -> wall seconds of each finished job, from a Snakemake log (start and finish stamps)."""
    stamp: datetime | None = None
    started: dict[str, tuple[str, datetime]] = {}
    rule: str | None = None
    out: dict[str, list[float]] = defaultdict(list)
    for line in log.splitlines():
        if m := STAMP.match(line):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := START.match(line):
            rule = m.group(1)
        elif (m := JOBID.match(line)) and rule is not None and stamp is not None:
            started[m.group(1)] = (rule, stamp)
            rule = None
        elif (m := FINISHED.match(line)) and stamp is not None and m.group(1) in started:
            name, t0 = started.pop(m.group(1))
            out[name].append((stamp - t0).total_seconds())
    return out


def snakemake_cmd(cores: int, jobs: int, exe: str | None = None) -> list[str]:
    exe = exe or shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    return [exe, "--profile", "workflow/profiles/local", "--cores", str(cores), "--jobs", str(jobs),
            "--set-threads", "train=1", "evaluate=1", "--configfile", CONFIG]  # fmt: skip


def run_matrix(proj: Path, env: dict[str, str], cores: int, jobs: int, exe: str | None, title: str) -> dict | None:
    """Run the matrix in ``proj``; print its table; return the summary (None when it failed)."""
    load_before = os.getloadavg()
    up_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    proc = subprocess.run(snakemake_cmd(cores, jobs, exe), cwd=proj, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    up_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        print(log[-4000:], file=sys.stderr)
        print(f"snakemake failed (exit {proc.returncode}) in {proj}", file=sys.stderr)
        return None
    times = job_times(log)
    times.pop("all", None)  # the target rule runs nothing
    train_loop = 0.0
    for f in sorted((proj / "results").glob("*/*/train_info.json")):
        train_loop += float(json.loads(f.read_text())["train_time_s"])
    total_job = sum(sum(v) for v in times.values())
    print(f"rehearsal of {title}: {CONFIG}, snakemake --cores {cores} --jobs {jobs} (train/evaluate 1 thread)")
    print(f"machine: {os.cpu_count()} cores; load average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print(f"uptime before: {up_before}")
    print(f"uptime after:  {up_after}")
    print()
    print("| rule | jobs | job wall s (sum) | mean s |")
    print("|---|---|---|---|")
    for rule in sorted(times, key=lambda r: -sum(times[r])):
        v = times[rule]
        print(f"| {rule} | {len(v)} | {sum(v):.0f} | {sum(v) / len(v):.1f} |")
    n_jobs = sum(len(v) for v in times.values())
    print(f"| **all** | {n_jobs} | {total_job:.0f} | {total_job / max(n_jobs, 1):.1f} |")
    print()
    print(f"wall time of the matrix: {wall:.0f} s")
    print(f"training loop (epochs + validation, sum over train jobs): {train_loop:.0f} s")
    share = 1.0 - train_loop / total_job if total_job else float("nan")
    print(f"share of job time outside the training loop: {100 * share:.0f} %", flush=True)
    print()
    return {"wall": wall, "jobs": n_jobs, "job_s": total_job, "train_loop": train_loop,
            "load": (load_before[0], load_after[0])}  # fmt: skip


def checkout_env(root: Path, proj: Path) -> tuple[dict[str, str], str]:
    """The environment and snakemake of a checkout with its own .venv (its editable install)."""
    venv = root / ".venv" / "bin"
    if not (venv / "snakemake").exists():
        raise SystemExit(f"{root}: no .venv/bin/snakemake (run `make install` there)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FIAN_WORKFLOW_RUN")}
    env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{proj}/mlflow.db", "PATH": f"{venv}{os.pathsep}{env.get('PATH', '')}"})
    return env, str(venv / "snakemake")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", type=Path, default=None, help="run in this (new) folder and keep it")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--checkout", type=Path, action="append", default=None,
                   help="a checkout with its own .venv to run the matrix of (repeatable: one after the other)")  # fmt: skip
    args = p.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="fian-rehearsal-") if args.keep is None else None
    base = Path(tmp.name) if tmp is not None else args.keep
    summary: dict[str, dict | None] = {}
    if not args.checkout:
        proj = copy_project(base / "proj" if tmp is not None else base)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{proj}/mlflow.db",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
        if (ROOT / "fian").is_dir():  # this checkout's code in the jobs too
            env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT)
        summary["this checkout"] = run_matrix(proj, env, args.cores, args.jobs, None, "this checkout")
    else:
        for i, root in enumerate(args.checkout):
            root = root.resolve()
            rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
            label = f"{root.name}@{rev.stdout.strip() or '?'}"
            proj = copy_project(base / f"{i}-{root.name}", root)
            env, exe = checkout_env(root, proj)
            summary[label] = run_matrix(proj, env, args.cores, args.jobs, exe, label)
        print("| checkout | matrix wall s | jobs | job wall s (sum) | training loop s | load before / after |")
        print("|---|---|---|---|---|---|")
        for label, s in summary.items():
            if s is None:
                print(f"| {label} | failed | | | | |")
            else:
                print(f"| {label} | {s['wall']:.0f} | {s['jobs']} | {s['job_s']:.0f} | {s['train_loop']:.0f} | "
                      f"{s['load'][0]:.1f} / {s['load'][1]:.1f} |")  # fmt: skip
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(v is not None for v in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
