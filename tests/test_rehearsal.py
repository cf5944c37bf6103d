"""The rehearsal (workflow/config/paper-mini.yaml, docs/PIPELINE.md "Rehearsal").

Fast: the config plans the paper's whole matrix, and its per-table-dataset ``tables_from`` puts
each tiny dataset's numbers in its own tables (values written by hand, read back from the LaTeX).
Slow: the matrix run by Snakemake with 4 jobs on 2 cores, SIGKILLed as a process group while
several train jobs run, rerun to completion, then checked against an uninterrupted reference.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fian.config import ConfigError
from fian_pipeline import registry as R
from fian_pipeline.tables import main as tables_main

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "workflow/config/paper-mini.yaml"
PAPER = ROOT / "workflow/config/paper.yaml"


def test_mini_config_plans_the_papers_whole_matrix() -> None:
    mini = R.plan_from_config(yaml.safe_load(MINI.read_text()), ROOT)
    paper = R.plan_from_config(yaml.safe_load(PAPER.read_text()), ROOT)
    # a dataset that reads another's store (charades_cd) is rehearsed by its tiny twin in tests/test_cd.py
    assert {d.name: d.variants for d in mini.datasets} == {f"{d.name}_mini": d.variants for d in paper.datasets
                                                           if d.features_from is None}  # fmt: skip
    assert [d.name for d in paper.datasets if d.features_from] == ["charades_cd"]
    assert (ROOT / "params/datasets/charades_cd_mini.yaml").is_file() and (ROOT / "tests/test_cd.py").is_file()
    assert all(d.baseline and d.source == "generate" for d in mini.datasets)
    assert dict(mini.tables_map) == {"activitynet": "activitynet_mini", "charades": "charades_mini",
                                     "tacos": "tacos_mini"}  # fmt: skip
    # every "(ours)" row of the six tables names a run the matrix makes
    from fian.reports.paper_results import load_paper_results

    made = {(d.name, v) for d in mini.datasets for v in (*d.variants, R.BASELINE)}
    for spec in load_paper_results().values():
        for _, variant in spec.ours:
            assert (f"{spec.dataset}_mini", variant) in made
    args = R.plan_args(R.stage("tables"), mini)
    mini_names = ["activitynet_mini", "charades_mini", "tacos_mini"]
    assert args == ["--split", "test", "--ours-from", "activitynet=activitynet_mini",
                    "--ours-from", "charades=charades_mini", "--ours-from", "tacos=tacos_mini",
                    "--datasets", *mini_names, "--stand-in", *mini_names]  # fmt: skip
    inputs = R.plan_inputs(R.stage("tables"), mini)
    # per run (15 of Tables 1-6, 3 blind of Table 7): metrics, info and train_info (provenance); per
    # baseline and per shuffle check (Table 7): metrics and info
    assert len(inputs) == 18 * 3 + 3 * 2 + 3 * 2 and "results/tacos_mini/stride2/metrics_test.json" in inputs
    assert "results/charades_mini/fian/shuffled/info_test.json" in inputs
    assert "results/tacos_mini/stride2/train_info.json" in inputs


@pytest.mark.parametrize(
    ("tables_from", "needle"),
    [({"tacos": "nosuch"}, "tables_from.tacos='nosuch'"), ({"youcook": "tacos_mini"}, "tables_from.youcook")],
)
def test_bad_tables_map_names_the_key(tables_from: dict, needle: str) -> None:
    config = {"datasets": {"tacos_mini": {"variants": ["fian"], "source": "generate"}}, "tables_from": tables_from}
    with pytest.raises(ConfigError, match="workflow config") as e:
        R.plan_from_config(config, ROOT)
    assert needle in str(e.value)


def _metrics(path: Path, value: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ms = {f"R@{n},IoU={m}": value for n in (1, 5) for m in (0.1, 0.3, 0.5, 0.7)}
    path.write_text(json.dumps({**ms, "mIoU": value, "unit": "fraction"}))


def test_tables_take_each_tables_rows_from_its_mapped_dataset(tmp_path: Path) -> None:
    res = tmp_path / "results"
    _metrics(res / "tacos_mini/stride2/metrics_test.json", 0.1234)
    _metrics(res / "charades_mini/fian/metrics_test.json", 0.5)
    _metrics(res / "tacos/stride2/metrics_test.json", 0.9)  # the real dataset's run: must not be used
    out = tmp_path / "reports"
    assert tables_main(["--results", str(res), "--out", str(out), "--ours-from", "tacos=tacos_mini",
                        "--ours-from", "charades=charades_mini"]) == 0  # fmt: skip
    t6 = (out / "table6.tex").read_text()
    row = next(line for line in t6.splitlines() if line.startswith(r"$1/2\theta_k$ (ours)"))
    assert "12.34" in row and "90.00" not in row
    assert "REHEARSAL TACoS (tiny, generated)" in t6 and "not comparable" in t6
    t3 = (out / "table3.tex").read_text()
    assert "50.00" in next(line for line in t3.splitlines() if line.startswith("FIAN (ours)"))
    t1 = (out / "table1.tex").read_text()  # activitynet not mapped: its own (absent) runs
    assert "---" in next(line for line in t1.splitlines() if line.startswith("FIAN (ours)"))
    assert "REHEARSAL" not in t1


def test_ours_from_cannot_mix_one_dataset_and_pairs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        tables_main(["--results", str(tmp_path), "--out", str(tmp_path / "r"), "--ours-from", "synthetic",
                     "--ours-from", "tacos=tacos_mini"])  # fmt: skip
    assert e.value.code == 2 and not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------
# The rehearsal itself: run, SIGKILL the process group, rerun, compare with an uninterrupted run
# --------------------------------------------------------------------------------------------

BIN = Path(sys.executable).parent
CMD = ["--profile", "workflow/profiles/local", "--cores", "2", "--jobs", "4", "--set-threads", "train=1",
       "evaluate=1", "--configfile", "workflow/config/paper-mini.yaml"]  # fmt: skip (docs/PIPELINE.md)
EPOCH_DONE = re.compile(r"epoch +1/\d+ \|")  # fian.train's per-epoch summary line
TRAIN_ARGV = re.compile(r"fian_pipeline\.train .*--out results/(\w+)/(\w+)")


def _project(tmp: Path) -> Path:
    proj = tmp / "proj"
    proj.mkdir()
    for name in ("Snakefile", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, proj / name)
    for name in ("workflow", "params"):
        shutil.copytree(ROOT / name, proj / name)
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    return proj


def _env(proj: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{proj}/mlflow.db"}  # fmt: skip


def _train_jobs(pgid: int) -> set[tuple[str, str]]:
    """(dataset, variant) of the train processes alive in a process group (from /proc)."""
    jobs = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getpgid(int(d.name)) != pgid:
                continue
            stat = (d / "stat").read_text()
            argv = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # zombie: dead already
            continue
        if (m := TRAIN_ARGV.search(argv)) and argv.startswith(("python", sys.executable, str(BIN))):
            jobs.add((m.group(1), m.group(2)))
    return jobs


def _kill_while_training(proj: Path, env: dict[str, str], limit_s: float) -> set[tuple[str, str]]:
    """Start the matrix; SIGKILL its whole process group once >= 2 train jobs run and one of them
    has finished an epoch (so that the rerun has state to resume).  Returns the killed train jobs."""
    with (proj / "attempt1.log").open("w") as log:
        proc = subprocess.Popen([str(BIN / "snakemake"), *CMD], cwd=proj, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    killed: set[tuple[str, str]] = set()
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            running = _train_jobs(proc.pid)
            past_epoch = {
                job for job in running
                if EPOCH_DONE.search((proj / f"logs/train/{job[0]}-{job[1]}.log").read_text(errors="replace"))
            }  # fmt: skip
            if len(running) >= 2 and past_epoch:
                time.sleep(0.5)  # let the epoch's state reach the disk
                killed = _train_jobs(proc.pid)
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert killed, f"never saw 2 train jobs at once within {limit_s} s:\n" + (proj / "attempt1.log").read_text()[-3000:]
    for _ in range(100):  # every process of the group is gone (SIGKILL cannot be caught)
        if not _train_jobs(proc.pid):
            break
        time.sleep(0.1)
    assert not _train_jobs(proc.pid)
    return killed


def _snakemake(proj: Path, env: dict[str, str], *extra: str) -> str:
    proc = subprocess.run([str(BIN / "snakemake"), *CMD, *extra], cwd=proj, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _reference(proj: Path, ref: Path, jobs: set[tuple[str, str]], env: dict[str, str]) -> None:
    """The killed train jobs trained uninterrupted from scratch (fresh folders, no state, MLflow off,
    one thread as under --set-threads train=1), evaluated, and the tables made from them plus the
    other (never interrupted) jobs' metrics."""
    shutil.copytree(proj / "results", ref / "results", ignore=shutil.ignore_patterns("*.pt", "predictions_*"))
    off = ref / "tracking-off.yaml"
    off.write_text("tracking: {enabled: false}\n")
    env = {**env, "OMP_NUM_THREADS": "1"}
    for d, v in sorted(jobs):
        out = ref / "results" / d / v
        shutil.rmtree(out)
        layers = ["--params", "params/base.yaml", f"params/datasets/{d}.yaml", f"params/variants/{v}.yaml", str(off)]
        data = ["--data", f"data/processed/{d}", "--text", f"data/interim/{d}/text"]
        evaluate = ["fian_pipeline.evaluate", *layers, *data, "--checkpoint", str(out / "checkpoint.pt"), "--split", "test"]
        for cmd in (
            ["fian_pipeline.train", *layers, *data, "--out", str(out)],
            [*evaluate, "--out", str(out)],
            *([[*evaluate, "--out", str(out / "shuffled"), "--shuffle-videos"]] if v == R.REFERENCE else []),  # Table 7
        ):  # fmt: skip
            run = subprocess.run([sys.executable, "-m", *cmd], cwd=proj, env=env, capture_output=True, text=True,
                                 timeout=600)  # fmt: skip
            assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    plan = R.plan_from_config(yaml.safe_load((proj / "workflow/config/paper-mini.yaml").read_text()), proj)
    assert tables_main(["--results", str(ref / "results"), "--out", str(ref / "reports"),
                        *R.plan_args(R.stage("tables"), plan)]) == 0  # fmt: skip


@pytest.mark.slow
def test_rehearsal_killed_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    env = _env(proj)
    killed = _kill_while_training(proj, env, limit_s=420)
    assert len(killed) >= 2

    _snakemake(proj, env, "--unlock")  # a killed Snakemake leaves its lock (docs/PIPELINE.md)
    _snakemake(proj, env)
    assert "Nothing to be done" in _snakemake(proj, env, "-n")
    _check_finished(proj, tmp_path / "ref", killed, env)


def _check_finished(proj: Path, ref: Path, killed: set[tuple[str, str]], env: dict[str, str]) -> None:
    """The checks of a rerun to completion after ``killed`` train jobs were SIGKILLed."""
    from mlflow.tracking import MlflowClient

    from fian.io import TEMP_MARK

    # no temp file left anywhere the stages write
    temps = [p for p in proj.rglob(f"*{TEMP_MARK}*") if ".snakemake" not in p.parts]
    assert not temps, temps

    # tracking: each train job's final run FINISHED with every epoch once; the killed attempts KILLED
    plan = R.plan_from_config(yaml.safe_load(MINI.read_text()), ROOT)
    client = MlflowClient(f"sqlite:///{proj}/mlflow.db")
    exps = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in exps], max_results=5000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    epochs = 2
    resumed = killed_runs = 0
    for d in plan.datasets:
        for v in d.variants:
            job = f"{d.name}/{v}/train"  # fian.tracking: the tag fian.job names the job of a run
            mine = sorted((r for r in runs if r.data.tags.get("fian.job") == job), key=lambda r: r.info.start_time)
            assert mine, (d.name, v)
            final = mine[-1]
            assert final.info.status == "FINISHED", (d.name, v, final.info.status)
            steps = [m.step for m in client.get_metric_history(final.info.run_id, "loss")]
            assert sorted(steps) == list(range(1, epochs + 1)), (d.name, v, steps)
            if (d.name, v) in killed:
                # every earlier attempt ended KILLED; a job killed while still starting up (before
                # its MLflow run began) has no earlier run and started afresh
                assert {r.info.status for r in mine[:-1]} <= {"KILLED"}, (d.name, v, [r.info.status for r in mine])
                if len(mine) == 1:
                    assert "fian.resumed_at_epoch" not in final.data.tags, (d.name, v)
                killed_runs += len(mine) - 1
                if int(final.data.tags.get("fian.resumed_at_epoch", "0")) >= 1:  # killed after an epoch
                    assert final.data.tags.get("fian.resumed_from") == mine[-2].info.run_id, (d.name, v)
                    resumed += 1
            else:
                assert len(mine) == 1, (d.name, v, [r.info.status for r in mine])
    assert resumed >= 1  # at least one killed job continued from a finished epoch
    assert killed_runs >= 1  # and its killed attempt is in the store, KILLED

    # every table (and the killed jobs' metrics) equal an uninterrupted run of the same seeds
    _reference(proj, ref, killed, env)
    for d, v in killed:
        rel = f"results/{d}/{v}/metrics_test.json"
        assert json.loads((proj / rel).read_text()) == json.loads((ref / rel).read_text()), rel
    for k in range(1, 8):
        assert (proj / f"reports/table{k}.tex").read_text() == (ref / f"reports/table{k}.tex").read_text(), k

    # DVC: the documented commands record the run; then nothing is out of date
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    dvc = str(BIN / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=proj, check=True, env=env)
    render = subprocess.run([sys.executable, "-m", "fian_pipeline.render", "--config",
                             "workflow/config/paper-mini.yaml"], cwd=proj, env=env, capture_output=True, text=True)  # fmt: skip
    assert render.returncode == 0, render.stderr[-2000:]
    commit = subprocess.run([dvc, "commit", "--force", "--quiet"], cwd=proj, env=env, capture_output=True, text=True)
    assert commit.returncode == 0, commit.stdout[-2000:] + commit.stderr[-2000:]
    status = subprocess.run([dvc, "status"], cwd=proj, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout[-3000:]
