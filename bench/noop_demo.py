"""Where a no-op `make demo` spends its time (issue 13 item 12).

    python bench/noop_demo.py [--repeat 3]

Builds a copy of the project in a temp folder whose outputs are all present and recorded
(empty files, `snakemake --touch --forceall`, `dvc commit`: no training), then times, median of
``--repeat`` runs: Snakemake's own no-op check, the demo's no-op run (`python -m
fian_pipeline.demo`), and the two steps the demo used to run after a no-op as well (`dvc commit
--force`, `snakemake --touch`), plus the demo's Python work before Snakemake (imports, the render
check, the plan).  Prints a table; record it with `uptime` in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1"}
SMK = [str(BIN / "snakemake"), "--profile", "workflow/profiles/local", "--cores", "1"]


def _run(proj: Path, *cmd: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=proj, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd}: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def build(proj: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from fian_pipeline import registry as R
    from fian_pipeline.render import load_plan

    for f in ("Snakefile", ".dvcignore", "dvc.yaml"):
        shutil.copy(ROOT / f, proj / f)
    for d in ("workflow", "params"):
        shutil.copytree(ROOT / d, proj / d)
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    for inst in R.instances(load_plan("workflow/config/default.yaml", proj)):
        for out in inst.stage.outputs:
            path = proj / R.fill(out.path, inst.wildcards)
            if out.kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
                (path / "x").write_text(inst.id)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}" if path.suffix == ".json" else inst.id)
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    _run(proj, str(BIN / "dvc"), "init", "-q")
    _run(proj, *SMK, "--touch", "--forceall", "--quiet")
    _run(proj, str(BIN / "dvc"), "commit", "--force", "--quiet")
    _run(proj, *SMK, "--touch", "--forceall", "--quiet")
    os.utime(proj / "dvc.lock")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    pre = (
        "import time; t=time.perf_counter(); from pathlib import Path; "
        "from fian_pipeline.render import check, rendered_files, load_plan, DEFAULT_CONFIG; "
        "check(rendered_files(DEFAULT_CONFIG, Path('.')), Path('.')); load_plan(DEFAULT_CONFIG, Path('.'))"
    )
    rows = {
        "snakemake no-op check (Snakemake alone)": [*SMK],
        "make demo no-op (python -m fian_pipeline.demo)": [sys.executable, "-m", "fian_pipeline.demo", "--cores", "1"],
        "  of which: demo's Python before Snakemake": [sys.executable, "-c", pre],
        "formerly also: dvc commit --force": [str(BIN / "dvc"), "commit", "--force", "--quiet"],
        "formerly also: snakemake --touch": [*SMK, "--touch", "--quiet"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        proj = Path(tmp)
        build(proj)
        times = {}
        for name, cmd in rows.items():
            times[name] = statistics.median(_run(proj, *cmd) for _ in range(args.repeat))
            if name.startswith("formerly"):  # keep the recorded state current for the next rows
                os.utime(proj / "dvc.lock")
    print(f"{'step':<50} {'median s':>9}")
    for name, t in times.items():
        print(f"{name:<50} {t:>9.2f}")
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
