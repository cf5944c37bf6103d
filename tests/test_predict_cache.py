"""The persistent cache of encoded videos (fian.predict_cache, issue 19 item 9): keyed by the
file's content and the feature recipe, capped, least recently used first, and safe when real
processes write, read and evict at once (or die in the middle of a write)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fian.predict_cache import VideoCache, cache_key, default_dir, default_max_bytes

REPO = Path(__file__).resolve().parents[1]
RECIPE = {"source": "extract:c3d:fc7:random", "backbone": "c3d", "weights": "random", "fps": 8.0, "clip_len": 16,
          "stride_frames": 8, "seed": 0, "num_steps": 8, "shorter": "repeat", "random_weights": True}  # fmt: skip


def rows_of(i: int, n: int = 5, d: int = 6) -> np.ndarray:
    return (np.arange(n * d, dtype=np.float32).reshape(n, d) + 1000 * i).astype(np.float32)


def test_round_trip_and_what_the_key_covers(tmp_path: Path) -> None:
    cache = VideoCache(tmp_path / "c", max_bytes=1 << 20)
    assert cache.get("a" * 64, RECIPE, 6) is None
    path = cache.put("a" * 64, RECIPE, rows_of(1), 12.5)
    rows, duration = cache.get("a" * 64, RECIPE, 6)
    np.testing.assert_array_equal(rows, rows_of(1))
    assert rows.dtype == np.float32 and duration == 12.5 and path == cache.path(cache_key("a" * 64, RECIPE))
    # what acts after the cached rows does not matter; how they were made does
    assert cache.get("a" * 64, {**RECIPE, "num_steps": 200, "shorter": "pad"}, 6) is not None
    for change in ({"weights": "c3d.pt"}, {"fps": None}, {"clip_len": 8}, {"seed": 1}, {"backbone": "i3d"}):
        assert cache.get("a" * 64, {**RECIPE, **change}, 6) is None, change
    assert cache.get("b" * 64, RECIPE, 6) is None  # another file's content
    assert cache.get("a" * 64, RECIPE, 7) is None and not path.exists()  # wrong width: removed, a miss


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "other key"])
def test_a_damaged_or_stray_entry_is_a_miss_and_is_removed(tmp_path: Path, damage: str, caplog) -> None:
    cache = VideoCache(tmp_path, max_bytes=1 << 20)
    path = cache.put("a" * 64, RECIPE, rows_of(1), 3.0)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "not a zip":
        path.write_text("hello")
    else:  # a valid entry of another key under this name
        other = cache.put("b" * 64, RECIPE, rows_of(2), 3.0)
        os.replace(other, path)
    assert cache.get("a" * 64, RECIPE, 6) is None and not path.exists()
    assert "removed" in caplog.text


def test_the_cap_evicts_the_least_recently_used(tmp_path: Path) -> None:
    one = VideoCache(tmp_path, max_bytes=1 << 20).put("0" * 64, RECIPE, rows_of(0), 1.0).stat().st_size
    for p in tmp_path.iterdir():
        p.unlink()
    cache = VideoCache(tmp_path, max_bytes=3 * one)  # room for three entries
    digests = [str(i) * 64 for i in range(5)]
    for i, dg in enumerate(digests[:3]):
        cache.put(dg, RECIPE, rows_of(i), 1.0)
        os.utime(cache.path(cache_key(dg, RECIPE)), (100 + i, 100 + i))  # put in that order
    assert cache.get(digests[0], RECIPE, 6) is not None  # used: now the most recent
    cache.put(digests[3], RECIPE, rows_of(3), 1.0)  # evicts the least recently used: digests[1]
    assert [cache.get(d, RECIPE, 6) is not None for d in digests[:4]] == [True, False, True, True]
    assert cache.size() <= 3 * one
    big = VideoCache(tmp_path, max_bytes=100)
    assert big.put(digests[4], RECIPE, rows_of(4), 1.0) is None  # larger than the whole cap: not stored


def test_a_folder_that_cannot_hold_entries_is_a_warning_not_an_error(tmp_path: Path, caplog) -> None:
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    cache = VideoCache(blocked / "videos", max_bytes=1 << 20)
    assert cache.put("a" * 64, RECIPE, rows_of(1), 1.0) is None and "cannot store an entry" in caplog.text
    assert cache.get("a" * 64, RECIPE, 6) is None and cache.entries() == []


def test_defaults_come_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FIAN_CACHE_DIR", str(tmp_path / "here"))
    monkeypatch.setenv("FIAN_CACHE_MAX_MB", "1.5")
    assert default_dir() == tmp_path / "here" and default_max_bytes() == int(1.5 * 2**20)
    monkeypatch.delenv("FIAN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == tmp_path / "xdg/fian/videos"
    monkeypatch.setenv("FIAN_CACHE_MAX_MB", "-3")
    with pytest.raises(ValueError, match="FIAN_CACHE_MAX_MB='-3'"):
        VideoCache()


_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from fian.predict_cache import VideoCache
    sys.path.insert(0, sys.argv[4])
    from test_predict_cache import RECIPE, rows_of

    cache = VideoCache(sys.argv[1], max_bytes=int(sys.argv[2]))
    rng = np.random.default_rng(int(sys.argv[3]))
    hits = 0
    for _ in range(40):
        i = int(rng.integers(0, 6))
        got = cache.get(str(i) * 64, RECIPE, 6)
        if got is None:
            cache.put(str(i) * 64, RECIPE, rows_of(i), float(i))
        else:  # whatever a reader gets is a whole, right entry
            assert got[1] == float(i) and np.array_equal(got[0], rows_of(i)), i
            hits += 1
    print(hits)
    """
)


def test_concurrent_processes_read_write_and_evict_safely(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    one = VideoCache(tmp_path / "probe", max_bytes=1 << 20).put("0" * 64, RECIPE, rows_of(0), 0.0).stat().st_size
    cap = 3 * one  # 6 videos, room for 3: constant eviction races
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(folder), str(cap), str(seed), str(Path(__file__).parent)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for seed in range(4)]  # fmt: skip
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in results]
    assert sum(int(out) for out, _ in results) > 0  # the processes did share entries
    cache = VideoCache(folder, max_bytes=cap)
    assert cache.size() <= cap and not [p for p in folder.iterdir() if ".fian-tmp." in p.name]
    for i in range(6):  # every entry left is right
        got = cache.get(str(i) * 64, RECIPE, 6)
        assert got is None or np.array_equal(got[0], rows_of(i))


def test_a_writer_killed_mid_write_leaves_no_entry_and_its_temp_is_swept(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import os, signal
        from fian.io import atomic_path
        with atomic_path({str(tmp_path / ("1" * 64 + ".npz"))!r}, suffix=".npz") as tmp:
            open(tmp, "wb").write(b"PK half an entry")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    temps = [p for p in tmp_path.iterdir() if ".fian-tmp." in p.name]
    assert len(temps) == 1 and not (tmp_path / ("1" * 64 + ".npz")).exists()
    cache = VideoCache(tmp_path, max_bytes=1 << 20)
    assert cache.get("1" * 64, RECIPE, 6) is None
    time.sleep(0.01)
    cache.put("2" * 64, RECIPE, rows_of(2), 1.0)  # a write sweeps the temps of dead writers
    assert not [p for p in tmp_path.iterdir() if ".fian-tmp." in p.name]
