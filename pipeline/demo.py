"""The demo job (`make demo`): the whole pipeline on the synthetic dataset, offline, on CPU.

    python -m fian_pipeline.demo [--cores N] [--configfile workflow/config/default.yaml] [-- SNAKEMAKE ARGS]

Runs ``snakemake --profile workflow/profiles/local`` on the default config (generate -> annotations
-> features -> text (GloVe fallback, loudly reported) -> prepare -> train -> evaluate -> baseline ->
tables, plots), then prints where the tables, the figures and the MLflow store are and the headline
metrics (each variant, blind FIAN and FIAN with shuffled videos (Table 7) vs the moment prior).  A second run with nothing changed does no work and
says so.  The finished run is recorded in dvc.lock (``dvc commit``) so that ``dvc repro`` agrees.  The stages' loud warnings (synthetic data, fallback word vectors) are repeated at the end.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fian.io import read_json
from fian_pipeline import registry as R
from fian_pipeline.common import command_parser
from fian_pipeline.render import DEFAULT_CONFIG, check, load_plan, rendered_files

HEADLINE = ("R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5", "R@5,IoU=0.7", "mIoU")


def loud_warnings(logs: Path, since: float) -> list[str]:
    """The framed `!! ...` lines (fian_pipeline.common.warn_loud) of the logs written since ``since``."""
    seen: list[str] = []
    for log in sorted(logs.rglob("*.log")) if logs.exists() else []:
        if log.stat().st_mtime < since:
            continue
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("!! ") and line not in seen:
                seen.append(line)
    return seen


def headline_runs(dataset: str, variants: Sequence[str], shuffle: bool = False) -> list[tuple[str, str]]:
    """``(folder under results/<dataset>, label)`` of the headline's rows: each variant, the
    video-shuffle check of FIAN (Table 7) when the config runs it, then the moment prior."""
    runs = [(v, f"{dataset}/{v}" + (" (no video)" if v == R.BLIND else "")) for v in variants]
    if shuffle:
        runs.append((f"{R.REFERENCE}/{R.SHUFFLED_DIR}", f"{dataset}/{R.REFERENCE} (videos shuffled)"))
    return [*runs, (R.BASELINE, f"{dataset}/{R.BASELINE} (baseline)")]


def headline(results: Path, dataset: str, variants: Sequence[str], split: str, shuffle: bool = False) -> list[str]:
    """A small text table: one row per run (variants, the shuffle check, the moment prior), percentages."""
    rows = [f"{'run':<34}" + "".join(f"{k:>13}" for k in HEADLINE)]
    for v, label in headline_runs(dataset, variants, shuffle):
        path = results / dataset / v / f"metrics_{split}.json"
        if not path.exists():
            rows.append(f"{label:<34}  (not run: {path} missing)")
            continue
        m = read_json(path)
        rows.append(
            f"{label:<34}" + "".join(f"{100 * m[k]:>12.2f}%" if k in m else f"{'-':>13}" for k in HEADLINE)
        )
    return rows


def headline_protocol(results: Path, dataset: str, variants: Sequence[str], split: str, shuffle: bool = False) -> str:
    """How the headline's metrics were computed, as their metrics files record it (the evaluate
    stage's ``info_<split>.json``): one protocol for all runs, or a note that they differ."""
    from fian.reports.tables import read_protocol

    texts = {}
    for v, _ in headline_runs(dataset, variants, shuffle):
        path = results / dataset / v / f"metrics_{split}.json"
        if path.exists():
            p = read_protocol(path)
            texts[v] = p.get("text", p.get("hit", "?")) if p else "not recorded"
    if not texts:
        return "no metrics yet"
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "protocols differ between runs: " + "; ".join(f"{v}: {t}" for v, t in texts.items())


def record_in_dvc(env: dict[str, str]) -> str:
    """Record the finished run in dvc.lock (`dvc commit`): dvc.yaml runs the same commands (rendered
    from the same registry, tests/test_render_drift.py), so `dvc repro` then has nothing to do."""
    exe = Path(sys.executable).parent / "dvc"
    if not exe.exists() or not Path(".dvc").is_dir():
        return "DVC: not recorded (no dvc executable or no .dvc/ here)"
    proc = subprocess.run([str(exe), "commit", "--force", "--quiet"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"DVC: `dvc commit` failed (dvc repro would rerun the stages): {(proc.stderr + proc.stdout).strip()[-500:]}"
    return (
        "DVC: this run is recorded in dvc.lock (`dvc repro` has nothing to do; `dvc metrics show`).\n"
        "     To compare later runs with it: git add dvc.lock && git commit -m 'demo run'; then after a\n"
        "     params edit and `make demo` (or `dvc repro`): dvc params diff; dvc metrics diff; dvc plots diff"
    )


def mlflow_where(uri: str, datasets: Sequence[str], ui: str = "http://127.0.0.1:5000") -> list[str]:
    """How to browse the runs: the ``mlflow ui`` command for a SQLite store (a server: its address)
    and, per dataset, the link that opens its runs (:func:`fian.tracking.ui_runs_url`: a plain link
    lands on MLflow 3's GenAI overview in a browser that never switched to "Model training")."""
    import sqlite3

    from fian.tracking import sqlite_path, ui_runs_url

    db = sqlite_path(uri)
    ids: dict[str, str] = {}
    if db is None:  # a server: it is the UI
        ui, lines = uri, [f"MLflow   {uri} (a server: open the links below)"]
    else:
        lines = [f"MLflow   {uri}  ->  mlflow ui --backend-store-uri {uri}   then open:"]
        if db.is_file():  # the experiment ids, read without importing mlflow (seconds)
            try:
                with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                    names = [f"fian/{d}" for d in datasets]
                    q = f"SELECT name, experiment_id FROM experiments WHERE name IN ({','.join('?' * len(names))})"
                    ids = {str(n): str(i) for n, i in con.execute(q, names)}
            except sqlite3.Error:
                ids = {}
    for d in datasets:
        exp = ids.get(f"fian/{d}")
        lines.append(f"  {'':7}{ui_runs_url(ui, exp)}" + ("" if exp else "  (the experiments list)") + f"  fian/{d}")
    lines.append(f"  {'':7}(or click \"Model training\" at the top left once: the browser keeps it; docs/TRAINING.md \"MLflow\")")
    return lines


LOCK_STAMP = Path(".snakemake/fian-demo-dvc-lock.sha256")  # dvc.lock as this demo last recorded it


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamp_lock(root: Path) -> None:
    """Remember dvc.lock as recorded now (a later change is DVC's own run: :func:`dvc_ran_since`)."""
    lock = root / "dvc.lock"
    if lock.exists():
        (root / LOCK_STAMP).parent.mkdir(parents=True, exist_ok=True)
        (root / LOCK_STAMP).write_text(_sha256(lock) + "\n")


def dvc_ran_since(root: Path) -> bool:
    """dvc.lock differs from what the last demo recorded: `dvc repro` or `dvc exp run` ran since."""
    lock, stamp = root / "dvc.lock", root / LOCK_STAMP
    return lock.exists() and stamp.exists() and stamp.read_text().strip() != _sha256(lock)


def adopt_dvc_outputs(cmd: list[str], env: dict[str, str], root: Path) -> str | None:
    """After `dvc repro` / `dvc exp run`, Snakemake takes every output DVC rewrote as stale (its
    records hold the old params and file times).  When DVC says the workspace is up to date, record
    DVC's outputs as Snakemake's (`snakemake --touch`, what README "Changing params and running experiments" says to run by
    hand); otherwise leave them: Snakemake reruns what is out of date."""
    if not dvc_ran_since(root):
        return None
    exe = Path(sys.executable).parent / "dvc"
    status = subprocess.run([str(exe), "status", "--quiet"], env=env, capture_output=True, text=True)
    if status.returncode != 0:
        return "dvc.lock changed since the last demo and `dvc status` reports changes: Snakemake reruns what is stale"
    touch = subprocess.run([*cmd, "--touch", "--quiet"], env=env, capture_output=True, text=True)
    if touch.returncode != 0:
        return f"warning: `snakemake --touch` failed: {touch.stderr.strip()[-500:]}"
    stamp_lock(root)
    return ("dvc.lock changed since the last demo (a `dvc repro` or `dvc exp run`) and DVC reports the "
            "outputs up to date: `snakemake --touch` recorded them for Snakemake")


def offline_plots_template(root: Path) -> str | None:
    """Write .dvc/plots/offline.html (`dvc plots show --html-template ...` offline) when missing."""
    from fian_pipeline.plots_template import DEFAULT_OUT, template

    if not (root / ".dvc").is_dir() or (root / DEFAULT_OUT).exists():
        return None
    try:
        (root / DEFAULT_OUT).parent.mkdir(parents=True, exist_ok=True)
        (root / DEFAULT_OUT).write_text(template(), encoding="utf-8")
    except Exception as e:  # noqa: BLE001 - a convenience: never fails the demo
        return f"warning: no offline page for `dvc plots show` ({e})"
    return f"wrote {DEFAULT_OUT}: `dvc plots show --html-template {DEFAULT_OUT}` renders without internet"


def lock_is_current(plan: R.Plan, root: Path) -> bool:
    """dvc.lock was written (by this demo) after every output of the plan last changed."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return False
    newest = 0.0
    for inst in R.instances(plan):
        for out in inst.outs():
            path = root / out
            for p in (path, path / ".snakemake_timestamp"):
                if p.exists():
                    newest = max(newest, p.stat().st_mtime)
    return lock.stat().st_mtime >= newest


def main(argv: Sequence[str] | None = None) -> int:
    p = command_parser("demo", __doc__)
    p.add_argument("--cores", default="all", help="cores for snakemake (default: all)")
    p.add_argument(
        "--configfile", default=DEFAULT_CONFIG, help="workflow config (default: the synthetic demo)"
    )
    p.add_argument("snakemake_args", nargs="*", help="extra snakemake arguments (after --)")
    args = p.parse_args(argv)
    root = Path.cwd()

    diffs = check(rendered_files(DEFAULT_CONFIG, root), root)
    if diffs:
        print(
            "warning: workflow/rules/*.smk or dvc.yaml differ from pipeline/registry.py or from the keys the "
            "params files hold (dvc.yaml tracks each key under its file); run `fian render`",
            file=sys.stderr,
        )
    plan = load_plan(args.configfile, root)  # schema + every params layer, before anything runs

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` = this venv
    cmd = ["snakemake", "--profile", "workflow/profiles/local", "--cores", str(args.cores)]
    if args.configfile != DEFAULT_CONFIG:
        cmd += ["--configfile", args.configfile]
    cmd += args.snakemake_args
    dry = any(a in ("-n", "--dry-run", "--dryrun") for a in args.snakemake_args)
    if args.configfile == DEFAULT_CONFIG and not dry:
        said = adopt_dvc_outputs(cmd, env, root)
        if said:
            print(said, flush=True)
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    nothing = False
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        nothing |= "Nothing to be done" in line
    code = proc.wait()
    elapsed = time.time() - t0
    if code != 0:
        print(
            f"\ndemo FAILED after {elapsed:.0f} s (snakemake exit {code}); see the log named above under logs/",
            file=sys.stderr,
        )
        return code

    print("\n" + "=" * 78)
    if nothing:
        print(
            f"Nothing to do: every output is up to date ({elapsed:.1f} s). Change a params file to rerun what reads it."
        )
    else:
        print(f"demo finished in {elapsed / 60:.1f} min")
    if args.configfile == DEFAULT_CONFIG and not dry:
        if nothing and lock_is_current(plan, root):
            # a no-op rerun costs Snakemake's own check only (bench/RESULTS.md "no-op make demo")
            print("DVC: dvc.lock already records these outputs (`dvc repro` has nothing to do)")
        else:
            print(record_in_dvc(env))
            # `dvc commit` re-links the outputs from its cache (new mtimes): restore Snakemake's order
            touch = subprocess.run([*cmd, "--touch", "--quiet"], env=env, capture_output=True, text=True)
            if touch.returncode != 0:
                print(f"warning: `snakemake --touch` failed: {touch.stderr.strip()[-500:]}", file=sys.stderr)
            elif (root / "dvc.lock").exists():
                os.utime(root / "dvc.lock")  # recorded after the outputs' last touch: lock_is_current
        stamp_lock(root)
        said = offline_plots_template(root)
        if said:
            print(said)
    warnings = loud_warnings(root / "logs", t0)
    if warnings:
        print("\nwarnings from the stages of this run:")
        for w in warnings:
            print("  " + w)
    print("\nwhere things are:")
    print("  tables   reports/table1.tex ... reports/table7.tex  (LaTeX, booktabs; beside each: .md Markdown,")
    print("           .csv every value, .provenance.json where each of our numbers came from)")
    print("  figures  reports/figures/<dataset>/<variant>/timeline_<split>.png, training_curves_<split>.png, "
          "attention_<split>.png (also in MLflow: the plots run's artifacts)")
    print(
        "  results  results/<dataset>/<variant>/metrics_<split>.json, predictions_<split>.jsonl, history.csv"
    )
    print("  report   snakemake --report report.html  (metrics, figures and tables with captions, one page)")
    from fian.config import load_config
    from fian.tracking import resolve_uri

    uri = resolve_uri(load_config(root / plan.params_dir / "base.yaml").tracking.tracking_uri)
    for line in mlflow_where(uri, [d.name for d in plan.datasets]):
        print("  " + line)
    print("  logs     logs/<stage>/<wildcards>.log")
    for d in plan.datasets:
        print(f"\nheadline ({d.name}, {plan.eval_split} split; "
              f"{headline_protocol(root / 'results', d.name, d.variants, plan.eval_split, d.shuffle)}):")  # fmt: skip
        for row in headline(root / "results", d.name, d.variants, plan.eval_split, d.shuffle):
            print("  " + row)
    if any(R.BLIND in d.variants or d.shuffle for d in plan.datasets):
        print(f"  how much comes from the video: {R.BLIND} = FIAN trained and evaluated without it; videos shuffled ="
              f" FIAN shown another video per query (reports/table7.md)")  # fmt: skip
    return 0


if __name__ == "__main__":
    from fian_pipeline.common import command_parser, run_stage

    sys.exit(run_stage(main))
