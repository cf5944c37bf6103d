"""Crash leftovers (issue 12 item 3): a writer killed by a real SIGKILL leaves its temp file; the
next run of the writer removes it, a live writer's temp is never touched, and no stage reads a
file of the annotations folder that params do not name.

The kill is deterministic: the child process runs the real stage with ``os.replace`` of fian.io
wrapped so that, for one target, it prints ``ready`` and sleeps before the rename -- the temp file
is then complete on disk (the worst case: before the fix a complete temp was read as an extra
split).  Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fian.io import TEMP_MARK, atomic_path, remove_stale_temps, temp_name

REPO = Path(__file__).resolve().parents[1]
TINY = ("dataset:\n  synthetic:\n    seed: 3\n    n_videos: {train: 6, val: 2, test: 2}\n"
        "text:\n  glove_epochs: 2\n")  # fmt: skip

# the child: wrap fian.io's os.replace for one target name, then run a module as __main__
CHILD = r"""
import os, runpy, sys, time, types
import fian.io
target = sys.argv[1]
proxy = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
def replace(src, dst):
    if os.path.basename(str(dst)) == target:
        print("ready", src, flush=True)
        time.sleep(120)
    os.replace(src, dst)
proxy.replace = replace
fian.io.os = proxy
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def kill_while_writing(target: str, module: str, args: list[str], timeout: float = 90.0) -> Path:
    """Run ``python -m module args``, SIGKILL it while ``target`` sits as a complete temp; return the temp."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, target, module, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"{module} did not reach the write of {target} within {timeout} s")
        line = proc.stdout.readline()
        assert line.startswith("ready "), (line, proc.stderr.read() if proc.poll() is not None else "")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    return Path(line.split(" ", 1)[1].strip())


def stage(module: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=_env(),
                          timeout=300)  # fmt: skip


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARK in p.name)


# ---------------------------------------------------------------------------------- fian.io level


def test_killed_writer_temp_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    script = (f"import time\nfrom fian.io import atomic_path\nwith atomic_path({str(target)!r}) as t:\n"
              "    t.write_bytes(b'half')\n    print('ready', t, flush=True)\n    time.sleep(120)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(60), "the writer did not start within 60 s"
        temp = Path(proc.stdout.readline().split(" ", 1)[1].strip())
        assert temp.read_bytes() == b"half" and temp.name.startswith(".out.bin" + TEMP_MARK)
        # a second writer while the first is alive: the live writer's temp is left alone
        with atomic_path(target) as t:
            t.write_bytes(b"second")
        assert temp.exists() and target.read_bytes() == b"second"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
    assert temp.exists()  # SIGKILL: nothing could delete it
    with atomic_path(target) as t:  # the next run of the writer
        t.write_bytes(b"third")
    assert target.read_bytes() == b"third" and temps(tmp_path) == []


def test_only_our_temps_of_dead_writers_are_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "train.parquet"
    mine = temp_name(target, ".parquet")  # this process: alive
    host = mine.split(TEMP_MARK)[1].split(".")[0]
    pid = os.getpid()
    names = {
        "alive": mine,
        "reused_pid": f".train.parquet{TEMP_MARK}{host}.{pid}-1.0123abcd.parquet",  # same pid, other start time
        "other_host": f".train.parquet{TEMP_MARK}not-{host}.1-1.0123abcd.parquet",
        "legacy": ".train.parquet.k2j4h5g6.parquet",  # a mkstemp name: not provably ours
        "other_target": f".val.parquet{TEMP_MARK}{host}.{pid}-1.0123abcd.parquet",
        "user_file": "train.parquet.notes",
    }
    for n in names.values():
        (tmp_path / n).write_text("x")
    with caplog.at_level("WARNING", logger="fian.io"):
        removed = remove_stale_temps(target)
    assert [p.name for p in removed] == [names["reused_pid"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for k, n in names.items() if k != "reused_pid")
    assert "host not-" in caplog.text and names["other_host"] in caplog.text


# ---------------------------------------------------------------------------------- stage level


@pytest.mark.slow
def test_killed_stages_leave_nothing_that_is_read_or_kept(tmp_path: Path) -> None:
    """kill -9 of annotations and of prepare while writing; reruns clean up; no stage reads a stray file."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    params = ["--params", str(REPO / "params/base.yaml"), str(REPO / "params/datasets/synthetic.yaml"),
              str(tmp_path / "tiny.yaml")]  # fmt: skip
    raw_ann, raw_feat, ann = tmp_path / "raw_ann", tmp_path / "raw_feat", tmp_path / "ann"
    store, text, out = tmp_path / "features.h5", tmp_path / "text", tmp_path / "processed"
    r = stage("fian_pipeline.generate", [*params, "--annotations-out", str(raw_ann), "--features-out", str(raw_feat)])
    assert r.returncode == 0, r.stderr

    ann_args = [*params, "--raw", str(raw_ann), "--out", str(ann)]
    temp = kill_while_writing("train.parquet", "fian_pipeline.annotations", ann_args)
    assert temps(ann) == [temp.name] and len(pd.read_parquet(temp)) == 24  # complete, readable, not renamed
    assert not (ann / "train.parquet").exists()
    # strays: a complete temp of a writer on another host (cannot be checked, so kept) and a table
    # that no split of params names; both hold a video with no features
    stray = pd.read_parquet(temp).assign(video_id="v_stray")
    other_host = ann / f".test.parquet{TEMP_MARK}elsewhere.1-1.0123abcd.parquet"
    stray.to_parquet(other_host)
    stray.to_parquet(ann / "extra.parquet")

    r = stage("fian_pipeline.annotations", ann_args)
    assert r.returncode == 0, r.stderr
    assert temps(ann) == [other_host.name]  # the killed writer's temp is gone; the other host's is kept
    assert sorted(p.name for p in ann.iterdir() if not p.name.startswith(".")) == [
        "counts.json", "extra.parquet", "test.parquet", "train.parquet", "val.parquet"]  # fmt: skip

    r = stage("fian_pipeline.features", [*params, "--raw", str(raw_feat), "--annotations", str(ann), "--out",
                                         str(store)])  # fmt: skip
    assert r.returncode == 0, r.stderr  # missing_features: fail -- v_stray was not requested
    assert json.loads(store.with_name("features.counts.json").read_text())["requested"] == 10
    r = stage("fian_pipeline.text", [*params, "--annotations", str(ann), "--out", str(text)])
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads((text / "coverage.json").read_text())["splits"]) == ["test", "train", "val"]

    prep_args = [*params, "--annotations", str(ann), "--features", str(store), "--text", str(text), "--out", str(out)]
    temp = kill_while_writing("test.h5", "fian_pipeline.prepare", prep_args)
    assert temps(out) == [temp.name] and not (out / "test.h5").exists()
    r = stage("fian_pipeline.prepare", prep_args)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["counts.json", "test.h5", "train.h5", "val.h5"]
    assert sorted(json.loads((out / "counts.json").read_text())["splits"]) == ["test", "train", "val"]
    assert temps(text) == [] and temps(tmp_path) == []


def test_killed_extraction_folder_is_removed_and_never_read(tmp_path: Path) -> None:
    import zipfile

    from fian.data.download import extract
    from fian.data.features import find_feature_file

    name = "sub_activitynet_v1-3.c3d.hdf5"  # the release's own name (activitynet_c3d)
    archive = tmp_path / "feats.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(name, b"whole")
    host = temp_name(tmp_path / "x", "").split(TEMP_MARK)[1].split(".")[0]
    # folders of killed extractions holding a half member: one of this host, whose pid is ours but
    # whose start time is not (a reused pid: dead), and one of another host (cannot be checked: kept)
    dead = tmp_path / f".feats.zip.extracting{TEMP_MARK}{host}.{os.getpid()}-1.0123abcd.d"
    elsewhere = tmp_path / f".feats.zip.extracting{TEMP_MARK}not-{host}.1-1.0123abcd.d"
    for d in (dead, elsewhere):
        d.mkdir()
        (d / name).write_bytes(b"ha")
    assert extract(archive, tmp_path) == [tmp_path / name]
    assert not dead.exists() and temps(tmp_path) == [elsewhere.name]
    assert find_feature_file(tmp_path, "activitynet_c3d") == tmp_path / name  # not the half one


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_killed_writer_not_yet_reaped_counts_as_dead(tmp_path: Path) -> None:
    """A zombie (SIGKILLed, its parent has not waited yet) still has /proc/<pid>: it is dead all the same."""
    target = tmp_path / "z.h5"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        from fian.io import _start_time

        start = _start_time(proc.pid)
        assert start
        host = temp_name(target, ".h5").split(TEMP_MARK)[1].split(".")[0]
        stale = tmp_path / f".z.h5{TEMP_MARK}{host}.{proc.pid}-{start}.0123abcd.h5"  # that process's temp
        stale.write_text("half")
        assert remove_stale_temps(target) == [] and stale.exists()  # alive: kept
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] != "Z":  # not reaped: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert remove_stale_temps(target) == [stale]
    finally:
        proc.kill()
        proc.wait(timeout=30)
