"""A job's fixed cost (issue 21 item 3): one forced evaluate / baseline job of the demo vs Snakemake's no-op.

    python -m bench.jobcost [--checkout PATH ...] [--repeat 3] [--keep DIR]

For each checkout (default: this one; ``--checkout`` again for more, e.g. a detached worktree of
an older commit with its own ``.venv``), builds the demo project in a temp folder with THAT
checkout's files and venv (Snakefile, workflow/, params/; ``train.epochs`` set to 1 in its
params.yaml so that building takes a minute, not four), then times, ``--repeat`` times and
interleaved between the checkouts (so that a change of machine load hits all of them alike):

- ``snakemake no-op``: Snakemake's own check with nothing to do (the targets below);
- ``evaluate job``: the same command with ``--force results/synthetic/fian/metrics_test.json``
  (one evaluate job: interpreter, imports, MLflow store, model, metrics, artifacts);
- ``baseline job``: ``--force results/synthetic/prior/metrics_test.json`` (the moment prior);
- ``evaluate stage, tracking on/off``: ``python -m fian_pipeline.evaluate`` run directly (no
  Snakemake), with ``--set tracking.enabled=false`` for "off";
- ``import torch+mlflow+pandas+h5py``: the libraries alone;
- ``4 jobs in one run``: ``--force`` of four small jobs at once (evaluate FIAN, evaluate blind,
  the video-shuffle check, the moment prior), with the workflow's pre-imported runner
  (fian_pipeline/runner.py, the default of a local run) and without it (``FIAN_NO_RUNNER=1``);
  "per job" = (run - no-op) / 4: what one more job of a run costs;
- ``evaluate stage through a warm runner``: the stage command of the rows above, handed to a
  runner that has already started (CPU: the command's own plus the forked job's, read from the
  runner's ``/proc/<pid>/stat`` children times).

"fixed" = job - no-op: what a job costs over Snakemake's own check (the evaluation itself, ~0.5 s
of model work on the demo's 240 test queries, included).  Each cell: median wall s (median CPU s
of the processes, user + sys, in brackets: less sensitive to other load than wall).  Prints one
Markdown table with ``uptime``'s load before and after; record it in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL_T = "results/synthetic/fian/metrics_test.json"
BASE_T = "results/synthetic/prior/metrics_test.json"
FOUR = [EVAL_T, BASE_T, "results/synthetic/blind/metrics_test.json", "results/synthetic/fian/shuffled/metrics_test.json"]
IMPORTS = "import torch, mlflow, pandas, h5py"


class Checkout:
    """One checkout: its files, its venv, its demo project."""

    def __init__(self, path: Path, work: Path) -> None:
        self.path = path.resolve()
        self.bin = self.path / ".venv" / "bin"
        if not (self.bin / "python").exists() or not (self.bin / "snakemake").exists():
            raise SystemExit(f"{self.path}: no .venv with python and snakemake (run `make install` there)")
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=self.path, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=self.path, capture_output=True, text=True)
        self.label = f"{self.path.name}@{rev.stdout.strip() or '?'}" + ("+changes" if dirty.stdout.strip() else "")
        self.proj = work / self.path.name / "proj"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "FIAN_WORKFLOW_RUN")}  # fmt: skip
        self.env.update({"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"})

    def smk(self, *extra: str) -> list[str]:
        return [str(self.bin / "snakemake"), "--profile", "workflow/profiles/local", "--cores", "2", *extra]

    def stage(self, tracking: bool) -> list[str]:
        cmd = [str(self.bin / "python"), "-m", "fian_pipeline.evaluate", "--params", "params/base.yaml",
               "params/datasets/synthetic.yaml", "params/variants/fian.yaml", "--overrides", "params.yaml",
               "--data", "data/processed/synthetic", "--text", "data/interim/synthetic/text",
               "--checkpoint", "results/synthetic/fian/checkpoint.pt", "--split", "test", "--out", "stage-out"]  # fmt: skip
        return cmd if tracking else [*cmd, "--set", "tracking.enabled=false"]

    def build(self) -> None:
        self.proj.mkdir(parents=True)
        for name in ("Snakefile", "dvc.yaml", ".gitignore", ".dvcignore", "params.yaml"):
            if (self.path / name).exists():
                shutil.copy(self.path / name, self.proj / name)
        for name in ("workflow", "params"):
            shutil.copytree(self.path / name, self.proj / name)
        params = self.proj / "params.yaml"
        text, n = re.subn(r"(?m)^(train:\n(?:  .*\n|\n)*?)  epochs:[ \t]*(#.*)?$", r"\g<1>  epochs: 1  \2",
                          params.read_text())  # fmt: skip
        if n != 1:
            raise SystemExit(f"{params}: no `train: epochs:` key to set")
        params.write_text(text)
        run(self.proj, self.env, self.smk(*FOUR, "--set-threads", "train=1"))  # building is not timed

    def has_runner(self) -> bool:
        return (self.path / "pipeline" / "runner.py").is_file()

    def start_runner(self) -> None:
        """A runner of this checkout's venv, as the Snakefile starts one (its env for the warm row)."""
        code = ("import os, sys, time; from fian_pipeline import runner as R; p = R.start(sys.argv[1]); "
                "print(os.environ[R.ENV], p.pid, flush=True); time.sleep(10**6)")  # fmt: skip
        self.runner = subprocess.Popen([str(self.bin / "python"), "-c", code, str(self.bin / "python")],
                                       cwd=self.proj, env=self.env, stdout=subprocess.PIPE, text=True)  # fmt: skip
        name, pid = self.runner.stdout.readline().split()
        self.runner_env = {**self.env, "FIAN_RUNNER": name, "FIAN_RUNNER_PID": pid}
        self.runner_pid = int(pid)
        run(self.proj, self.runner_env, [str(self.bin / "python"), "-m", "fian_pipeline.evaluate", "--help"])  # warm

    def runner_cpu(self) -> float:
        """CPU s of the runner's reaped children (its jobs), from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.runner_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime


def run(cwd: Path, env: dict[str, str], cmd: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the process and its children) of ``cmd``; fails loudly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkout", type=Path, action="append", default=None,
                   help="a checkout with its own .venv (repeatable; default: this one)")  # fmt: skip
    p.add_argument("--repeat", type=int, default=3, help="timed runs per cell (median)")
    p.add_argument("--keep", type=Path, default=None, help="build the projects in this (new) folder and keep it")
    args = p.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="fian-jobcost-"))
    checkouts = [Checkout(c, work) for c in (args.checkout or [ROOT])]
    load0 = uptime()
    print(f"building the demo projects in {work} ...", file=sys.stderr, flush=True)
    for c in checkouts:
        t0 = time.perf_counter()
        c.build()
        print(f"  {c.label}: built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    rows = {
        "snakemake no-op": lambda c: c.smk(*FOUR),
        "evaluate job (forced)": lambda c: c.smk("--force", EVAL_T),
        "baseline job (forced)": lambda c: c.smk("--force", BASE_T),
        "4 jobs in one run, runner": lambda c: c.smk("--force", *FOUR),
        "4 jobs in one run, no runner": lambda c: c.smk("--force", *FOUR),
        "evaluate stage alone, tracking on": lambda c: c.stage(True),
        "evaluate stage alone, tracking off": lambda c: c.stage(False),
        "evaluate stage through a warm runner, tracking on": lambda c: c.stage(True),
        f"`{IMPORTS}`": lambda c: [str(c.bin / "python"), "-c", IMPORTS],
    }
    for c in checkouts:
        if c.has_runner():
            c.start_runner()

    def timed(name: str, c: Checkout) -> tuple[float, float]:
        if name.endswith("no runner"):
            return run(c.proj, {**c.env, "FIAN_NO_RUNNER": "1"}, rows[name](c))
        if "warm runner" in name:
            if not c.has_runner():
                return float("nan"), float("nan")
            before = c.runner_cpu()
            wall, cpu = run(c.proj, c.runner_env, rows[name](c))
            return wall, cpu + c.runner_cpu() - before
        return run(c.proj, c.env, rows[name](c))

    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    load1 = uptime()
    for i in range(args.repeat):
        for name in rows:
            for c in checkouts:
                times.setdefault((name, c.label), []).append(timed(name, c))
        print(f"  round {i + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    load2 = uptime()
    for c in checkouts:
        if c.has_runner():
            c.runner.kill()

    def cell(name: str, c: Checkout) -> tuple[float, float]:
        v = times[(name, c.label)]
        return statistics.median(w for w, _ in v), statistics.median(u for _, u in v)

    print(f"jobcost: {len(checkouts)} checkout(s), median of {args.repeat}, {os.cpu_count()} CPUs")
    print(f"uptime before building: {load0}")
    print(f"uptime before timing:   {load1}")
    print(f"uptime after timing:    {load2}")
    print()
    print("| step | " + " | ".join(c.label for c in checkouts) + " |")
    print("|---|" + "---|" * len(checkouts))
    for name in rows:
        print(f"| {name} | " + " | ".join("{:.2f} ({:.2f} CPU)".format(*cell(name, c)) for c in checkouts) + " |")
    for job, n in (("evaluate job (forced)", 1), ("baseline job (forced)", 1), ("4 jobs in one run, runner", 4),
                   ("4 jobs in one run, no runner", 4)):  # fmt: skip
        label = f"**fixed cost: ({job} - no-op) / {n}**"
        print(f"| {label} | " + " | ".join(
            f"**{(cell(job, c)[0] - cell('snakemake no-op', c)[0]) / n:.2f}** "
            f"({(cell(job, c)[1] - cell('snakemake no-op', c)[1]) / n:.2f} CPU)" for c in checkouts) + " |")  # fmt: skip
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
