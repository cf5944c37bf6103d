"""The data stages at the real sizes (issue 21 items 1-2): time, peak RSS, I/O and output per stage.

``generate`` writes the three releases at full size (:func:`fian.data.releases.write_full_release`:
the real annotation files, random features in the real files' layout, dtype, rate and chunking)
and a GloVe-840B-shaped text file (2,196,017 lines x 300 values, the annotations' words plus
filler) under ``--data``.  ``run`` then runs the stages annotations, features (import), text and
prepare of each dataset on them, ONE STAGE AT A TIME, each in its own process tree::

    /usr/bin/time -v python -c <shim> fian_pipeline.<stage> --params ... --overrides params.yaml ...

The shim runs the stage module in-process (``runpy``) and, at exit, copies ``/proc/self/io`` to a
file: ``rchar``/``wchar`` (bytes through read/write calls, page cache included) and
``read_bytes``/``write_bytes`` (what reached the block layer).  ``/usr/bin/time -v`` reports the
stage process's own peak RSS ("Maximum resident set size", from its wait4 rusage: this process
and nothing else, unlike RUSAGE_CHILDREN of a long-lived parent, which keeps the maximum over
every child so far).  Output size = bytes under the stage's output path.  Then ``--report`` adds
the paper-size projections (training epoch, test evaluation, the paper matrix's disk).

    nice -n 10 .venv/bin/python -m bench.scale generate --data /work/scale_data      # ~36 GB
    nice -n 10 .venv/bin/python -m bench.scale run --data /work/scale_data --json out.json
    .venv/bin/python -m bench.scale report --json out.json                          # the tables

``--scale 0.01`` writes 1 % of the videos and rows (a quick rehearsal of the same code path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ANNOTATIONS = Path(os.environ.get("FIAN_SHARED_ANNOTATIONS") or ROOT.parent / "shared" / "data" / "annotations")
# dataset -> folder of its real annotation files under ANNOTATIONS
SOURCES = {"activitynet": "activitynet", "tacos": "tacos", "charades": "charades-sta"}
STAGES = ("annotations", "features", "text", "prepare")  # the data phase; `run --stages glove_scan` times the scan alone
GLOVE = "raw/glove/glove.840B.300d.txt"
# the shim: run one stage module as __main__, then save /proc/self/io (argv: io file, module, args...)
SHIM = (
    "import atexit, runpy, sys\n"
    "out = sys.argv[1]\n"
    "def dump():\n"
    "    open(out, 'w').write(open('/proc/self/io').read())\n"
    "atexit.register(dump)\n"
    "mod = sys.argv[2]\n"
    "sys.argv = [mod] + sys.argv[3:]\n"
    "runpy.run_module(mod, run_name='__main__', alter_sys=True)\n"
)


def splits_of(dataset: str) -> dict[str, list[str]]:
    return yaml.safe_load((ROOT / "params" / "datasets" / f"{dataset}.yaml").read_text())["dataset"]["splits"]


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


# ------------------------------------------------------------------------------------------- generate


def generate(data: Path, scale: float, datasets: list[str], glove_lines: int | None) -> dict[str, Any]:
    from fian.data.releases import GLOVE_840B_LINES, release_sentences, write_full_release, write_glove_like
    from fian.data.text import tokenize

    out: dict[str, Any] = {}
    words: set[str] = set()
    for d in datasets:
        t = time.perf_counter()
        src = ANNOTATIONS / SOURCES[d]
        info = write_full_release(src, data / "raw" / d / "annotations", data / "raw" / d / "features", fmt=d,
                                  splits=splits_of(d), scale=scale)  # fmt: skip
        info["seconds"] = round(time.perf_counter() - t, 1)
        info["feature_bytes"] = du(data / "raw" / d / "features")
        out[d] = info
        print(f"generate {d}: {info}", flush=True)
        words |= {w for s in release_sentences(src, d, splits_of(d)) for w in tokenize(s)}
    t = time.perf_counter()
    lines = glove_lines or max(len(words) + 100, int(GLOVE_840B_LINES * scale))
    info = write_glove_like(data / GLOVE, sorted(words), lines=lines)
    info["seconds"] = round(time.perf_counter() - t, 1)
    out["glove"] = info
    print(f"generate glove: {info}", flush=True)
    return out


# ------------------------------------------------------------------------------------------------ run


def stage_command(stage: str, d: str, data: Path) -> tuple[list[str], Path]:
    """The stage's arguments (after the module) and its output path."""
    raw, interim = data / "raw" / d, data / "interim" / d
    common = ["--params", str(ROOT / "params/base.yaml"), str(ROOT / f"params/datasets/{d}.yaml"),
              "--overrides", str(ROOT / "params.yaml")]  # fmt: skip
    ann, store, text, processed = interim / "annotations", interim / "features.h5", interim / "text", data / "processed" / d
    if stage == "annotations":
        return [*common, "--raw", str(raw / "annotations"), "--out", str(ann)], ann
    if stage == "features":
        return [*common, "--raw", str(raw / "features"), "--annotations", str(ann), "--out", str(store)], store
    if stage == "text":
        return [*common, "--annotations", str(ann), "--glove", str(data / GLOVE), "--out", str(text)], text
    if stage == "glove_scan":  # a module of its own: the scan alone, with the text stage's vocabulary
        return ["glove-scan", "--glove", str(data / GLOVE), "--vocab", str(text / "vocab.json")], text / "vocab.json"
    if stage == "prepare":
        return [*common, "--annotations", str(ann), "--features", str(store), "--text", str(text),
                "--out", str(processed)], processed  # fmt: skip
    raise ValueError(stage)


def parse_time_v(text: str) -> dict[str, float]:
    """The fields of ``/usr/bin/time -v`` that the table uses."""
    fields = {
        "max_rss_kib": r"Maximum resident set size \(kbytes\): (\d+)",
        "fs_in_blocks": r"File system inputs: (\d+)",
        "fs_out_blocks": r"File system outputs: (\d+)",
        "user_s": r"User time \(seconds\): ([\d.]+)",
        "sys_s": r"System time \(seconds\): ([\d.]+)",
        "exit": r"Exit status: (\d+)",
    }
    out = {}
    for key, pattern in fields.items():
        m = re.search(pattern, text)
        if m is None:
            raise ValueError(f"/usr/bin/time -v output without {key!r}:\n{text[-2000:]}")
        out[key] = float(m.group(1))
    return out


def run_stage(stage: str, d: str, data: Path, logs: Path) -> dict[str, Any]:
    args, output = stage_command(stage, d, data)
    io_file, time_file = logs / f"{d}-{stage}.io", logs / f"{d}-{stage}.time"
    module = "bench.scale" if stage == "glove_scan" else f"fian_pipeline.{stage}"
    cmd = ["/usr/bin/time", "-v", "-o", str(time_file), sys.executable, "-c", SHIM, str(io_file), module, *args]
    t = time.perf_counter()
    with open(logs / f"{d}-{stage}.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"{d}/{stage} failed (exit {rc}): see {logs / f'{d}-{stage}.log'}")
    tv = parse_time_v(time_file.read_text())
    io = dict(line.split(": ") for line in io_file.read_text().splitlines())
    row = {"dataset": d, "stage": stage, "wall_s": round(wall, 1), "user_s": tv["user_s"], "sys_s": tv["sys_s"],
           "max_rss_mib": round(tv["max_rss_kib"] / 1024, 1), "rchar": int(io["rchar"]), "wchar": int(io["wchar"]),
           "read_bytes": int(io["read_bytes"]), "write_bytes": int(io["write_bytes"]), "output_bytes": du(output)}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------------------------- report


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| dataset | stage | wall s | CPU s (user+sys) | peak RSS | read (syscalls) | written (syscalls) | "
            "disk read | disk written | output |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    body = [
        f"| {r['dataset']} | {r['stage']} | {r['wall_s']:.1f} | {r['user_s'] + r['sys_s']:.1f} | {r['max_rss_mib']:.0f} MiB | "
        f"{gib(r['rchar'])} | {gib(r['wchar'])} | {gib(r['read_bytes'])} | {gib(r['write_bytes'])} | {gib(r['output_bytes'])} |"
        for r in rows
    ]
    return "\n".join([head, *body])


def glove_scan(glove: Path, vocab_file: Path) -> dict[str, Any]:
    """The GloVe scan alone (fian.data.text.read_glove with a text stage's vocabulary)."""
    from fian.data.text import Vocab, read_glove

    vocab = Vocab.load(vocab_file)
    t = time.perf_counter()
    hits = read_glove(glove, vocab, dim=300)
    out = {"seconds": round(time.perf_counter() - t, 1), "lines": hits.lines, "vocab": len(vocab),
           "found": len(hits.vectors)}  # fmt: skip
    print(json.dumps(out), flush=True)
    return out


# bench/train_speed.py on this VM, quiet machine (bench/RESULTS.md "Training loop and evaluation speed",
# 2026-11-28): projected seconds per training epoch (fp32, batch 1/8 of the paper's) and evaluated queries/s
TRAIN_SPEED = {"activitynet": (4775.6, 37.1), "tacos": (1663.6, 28.5), "charades": (826.6, 91.9)}
PREDICTION_BYTES = 800  # one query's line of predictions_<split>.jsonl (10 segments + scores; a demo run)


def checkpoint_bytes(d: str, vocab: int) -> int:
    """checkpoint.pt of one run: model + best_model weights and Adam's two moments (fian.train)."""
    from fian.config import load_params
    from fian.model.build import build_model

    cfg = load_params(ROOT / "params", d, "fian")
    model = build_model(cfg, vocab_size=vocab)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return 2 * weights + 2 * trainable


def projection(results: dict[str, Any]) -> str:
    """Training and evaluation at paper size, and the disk of workflow/config/paper.yaml's matrix."""
    from fian.config import load_params

    paper = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
    seeds = len(paper.get("seeds") or [0])
    rows = {(r["dataset"], r["stage"]): r for r in results["rows"]}
    lines = ["| dataset | epoch (proj.) | epochs | one training run | test queries | evaluation (test) | "
             "runs (variants x seeds) | checkpoint.pt | data artifacts | raw files |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    total = {"raw": 0, "data": 0, "runs": 0}
    dvc = 0  # bytes DVC's cache copies again: every declared output (cache type copy: ext4 has no reflinks)
    for d, (epoch_s, qps) in TRAIN_SPEED.items():
        if (d, "prepare") not in rows:
            continue
        cfg = load_params(ROOT / "params", d, "fian")
        info = json.loads((Path(results["data"]) / "interim" / d / "text" / "coverage.json").read_text())
        counts = json.loads((Path(results["data"]) / "processed" / d / "counts.json").read_text())
        test = counts["splits"]["test"]["queries_out"]
        runs = len(paper["datasets"][d]["variants"]) * seeds
        ckpt = checkpoint_bytes(d, int(info["vocab_size"]))
        # per run: checkpoint.pt, the resume state (fian.resume: the same checkpoint), MLflow's artifact copy,
        # predictions of the test split (twice: the output and MLflow's copy)
        run = 3 * ckpt + 2 * test * PREDICTION_BYTES
        declared = ckpt + test * PREDICTION_BYTES  # the run's declared outputs (what DVC caches)
        data = sum(rows[(d, s)]["output_bytes"] for s in ("annotations", "features", "text", "prepare"))
        raw = results.get("raw_feature_bytes", {}).get(d) or results.get("generate", {}).get(d, {}).get("feature_bytes", 0)
        total["raw"] += raw
        total["data"] += data
        total["runs"] += runs * run
        dvc += raw + data + runs * declared
        lines.append(f"| {d} | {epoch_s / 60:.0f} min | {cfg.train.epochs} | {epoch_s * cfg.train.epochs / 3600:.1f} h | "
                     f"{test:,} | {test / qps / 60:.1f} min | {runs} | {gib(ckpt)} | {gib(data)} | {gib(raw)} |")  # fmt: skip
    glove = results.get("generate", {}).get("glove", {}).get("bytes", 0)
    total["raw"] += glove
    dvc += glove
    lines.append("")
    lines.append(f"Paper matrix ({seeds} seeds): raw feature files {gib(total['raw'] - glove)} + GloVe text {gib(glove)}, "
                 f"data artifacts (interim + processed) {gib(total['data'])}, runs {gib(total['runs'])}: "
                 f"**{gib(sum(total.values()))}** (Snakemake; under `dvc repro` the DVC cache holds a second copy of "
                 f"every declared output: {gib(sum(total.values()) + dvc)}).")  # fmt: skip
    results["disk_total"] = sum(total.values())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--data", type=Path, required=True)
    g.add_argument("--scale", type=float, default=1.0)
    g.add_argument("--datasets", nargs="+", default=list(SOURCES))
    g.add_argument("--glove-lines", type=int, help="lines of the GloVe-shaped file (default: 840B's x scale)")
    g.add_argument("--json", type=Path)
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--datasets", nargs="+", default=list(SOURCES))
    r.add_argument("--stages", nargs="+", default=list(STAGES))
    r.add_argument("--json", type=Path, required=True, help="results file (appended per stage)")
    r.add_argument("--drop-raw-after-import", action="store_true",
                   help="delete a dataset's raw feature files once its features stage is measured (disk)")
    gs = sub.add_parser("glove-scan", help="time fian.data.text.read_glove alone (run as a stage by `run`)")
    gs.add_argument("--glove", type=Path, required=True)
    gs.add_argument("--vocab", type=Path, required=True)
    s = sub.add_parser("report")
    s.add_argument("--json", type=Path, required=True)
    a = p.parse_args(argv)
    if a.cmd == "generate":
        info = generate(a.data, a.scale, a.datasets, a.glove_lines)
        if a.json:
            a.json.write_text(json.dumps(info, indent=2) + "\n")
        return 0
    if a.cmd == "run":
        logs = a.data / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        results = json.loads(a.json.read_text()) if a.json.is_file() else {"rows": []}
        results["data"] = str(a.data)
        if (a.data / "generate.json").is_file():
            results["generate"] = json.loads((a.data / "generate.json").read_text())
        results.setdefault("machine", f"{platform.node()} {platform.processor() or platform.machine()}, "
                                      f"{os.cpu_count()} CPUs, python {platform.python_version()}")  # fmt: skip
        for d in a.datasets:
            for stage in a.stages:
                before = load_avg()
                row = run_stage(stage, d, a.data, logs)
                row["load_before"], row["load_after"] = before, load_avg()
                results["rows"] = [x for x in results["rows"] if (x["dataset"], x["stage"]) != (d, stage)] + [row]
                a.json.write_text(json.dumps(results, indent=2) + "\n")
                if stage == "features" and a.drop_raw_after_import:
                    results.setdefault("raw_feature_bytes", {})[d] = du(a.data / "raw" / d / "features")
                    shutil.rmtree(a.data / "raw" / d / "features")
                    a.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    if a.cmd == "glove-scan":
        glove_scan(a.glove, a.vocab)
        return 0
    results = json.loads(a.json.read_text())
    print(table([r for r in results["rows"] if r["stage"] in STAGES]))
    data_rows = [r for r in results["rows"] if r["stage"] in STAGES]
    per = {}
    for r in data_rows:
        per[r["dataset"]] = per.get(r["dataset"], 0) + r["wall_s"]
    big = max(data_rows, key=lambda r: r["max_rss_mib"])
    print(f"\ndata phase: {', '.join(f'{d} {s / 60:.1f} min' for d, s in per.items())}; all {sum(per.values()) / 60:.1f} min; "
          f"largest peak RSS {big['max_rss_mib']:.0f} MiB ({big['dataset']}/{big['stage']})")  # fmt: skip
    scans = [r for r in results["rows"] if r["stage"] == "glove_scan"]
    for r in scans:
        print(f"GloVe scan alone ({r['dataset']} vocabulary): {r['wall_s']:.1f} s wall, peak RSS {r['max_rss_mib']:.0f} MiB")
    print()
    print(projection(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
