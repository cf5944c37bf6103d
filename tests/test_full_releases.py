"""Full-size synthetic releases (issue 21): the writers' code path at a small ``scale``.

Each check reads the written files with h5py / numpy / json directly and recomputes the expected
rows from the real annotation files by hand (the rates of fian/data/releases.py's section comment).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from fian.data import releases as R

SCALE = 0.004
CHARADES_SCALE = 0.05  # Charades videos are ~30 s: a few rows each at this scale (1 at SCALE)
FOLDERS = {"activitynet": "activitynet", "tacos": "tacos", "charades": "charades-sta"}


def _splits(repo_root: Path, d: str) -> dict:
    return yaml.safe_load((repo_root / f"params/datasets/{d}.yaml").read_text())["dataset"]["splits"]


def _first_ids(path: Path, fraction: float) -> list[str]:
    """The first ``fraction`` of a JSON file's video ids (at least one), in file order."""
    data = json.loads(path.read_text())
    return list(data)[: max(1, int(len(data) * fraction))]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, shared_annotations: Path, repo_root: Path) -> dict:
    root = tmp_path_factory.mktemp("full")
    info = {}
    for d, folder in FOLDERS.items():
        info[d] = R.write_full_release(shared_annotations / folder, root / d / "ann", root / d / "feat", fmt=d,
                                       splits=_splits(repo_root, d),
                                       scale=CHARADES_SCALE if d == "charades" else SCALE, seed=3)  # fmt: skip
    return {"root": root, "info": info, "shared": shared_annotations}


def test_activitynet_c3d_layout(written: dict) -> None:
    src, root = written["shared"] / "activitynet", written["root"] / "activitynet"
    want: dict[str, int] = {}
    for name in ("train.json", "val.json", "test.json"):
        data = json.loads((src / name).read_text())
        for vid in _first_ids(src / name, SCALE):  # floor(duration * 29.97 / 8) rows, times the scale
            want[vid] = max(1, int(data[vid]["duration"] * 29.97 / 8 * SCALE))
        cut = json.loads((root / "ann" / name).read_text())
        assert list(cut) == _first_ids(src / name, SCALE) and all(cut[v] == data[v] for v in cut)
    with h5py.File(root / "feat" / "sub_activitynet_v1-3.c3d.hdf5", "r") as f:
        assert sorted(f.keys()) == sorted(want) and bool(f.attrs["synthetic"])
        for vid, n in want.items():
            assert list(f[vid].keys()) == ["c3d_features"]
            ds = f[vid]["c3d_features"]
            assert ds.shape == (n, 500) and ds.dtype == np.dtype("<f8")
            assert ds.chunks is None and ds.compression is None  # contiguous, unfiltered
        assert np.isfinite(ds[()]).all() and ds[()].std() > 0.5  # random values, not zeros
    assert written["info"]["activitynet"]["rows"] == sum(want.values())


def test_tacos_c3d_layout(written: dict) -> None:
    src, root = written["shared"] / "tacos", written["root"] / "tacos"
    want = {}
    for name in ("train.json", "val.json", "test.json"):
        data = json.loads((src / name).read_text())
        for vid in _first_ids(src / name, SCALE):  # 64-frame windows every 12 frames
            want[vid] = max(1, int(((data[vid]["num_frames"] - 64) // 12 + 1) * SCALE))
    with h5py.File(root / "feat" / "tall_c3d_features.hdf5", "r") as f:
        assert sorted(f.keys()) == sorted(want) and all(k.endswith(".avi") for k in f)
        for vid, n in want.items():
            ds = f[vid]
            assert ds.shape == (n, 4096) and ds.dtype == np.dtype("<f4")
            assert ds.compression == "gzip" and ds.chunks is not None


def test_charades_i3d_npy_layout(written: dict) -> None:
    src, root = written["shared"] / "charades-sta", written["root"] / "charades"
    want = {}
    for split in ("train", "test"):
        lines = (src / f"charades_sta_{split}.txt").read_text().splitlines()
        ids = list(dict.fromkeys(line.split()[0] for line in lines if line.strip()))
        ids = ids[: max(1, int(len(ids) * CHARADES_SCALE))]
        with open(src / f"Charades_v1_{split}.csv", newline="") as f:
            length = {r["id"]: float(r["length"]) for r in csv.DictReader(f)}
        want.update({v: max(1, int(length[v] * 3 * CHARADES_SCALE)) for v in ids})  # 24 fps / 8 frames
        kept = (root / "ann" / f"charades_sta_{split}.txt").read_text().splitlines()
        assert kept == [line for line in lines if line.split()[0] in set(ids)]
        assert (root / "ann" / f"Charades_v1_{split}.csv").read_bytes() == (src / f"Charades_v1_{split}.csv").read_bytes()
    files = sorted(p.stem for p in (root / "feat").glob("*.npy"))
    assert files == sorted(want)
    for vid, n in want.items():
        a = np.load(root / "feat" / f"{vid}.npy", allow_pickle=False)
        assert a.shape == (n, 1024) and a.dtype == np.dtype("<f4")


def test_the_stages_read_the_full_size_layout(written: dict, repo_root: Path, tmp_path: Path) -> None:
    """The project's own parser and importer take the written release (ids, rows, float64 -> float32)."""
    from fian.config import load_config
    from fian.data.annotations import load_annotations
    from fian.data.features import FeatureStore, import_features

    root = written["root"] / "activitynet"
    cfg = load_config(repo_root / "params/base.yaml", repo_root / "params/datasets/activitynet.yaml")
    tables, _ = load_annotations(root / "ann", "activitynet", cfg.dataset.splits, cfg.dataset.policy)
    ids = sorted({v for t in tables.values() for v in t["video_id"]})
    report = import_features(root / "feat", ids, tmp_path / "store.h5", layout="activitynet_c3d", feature_dim=500,
                             backbone="c3d", missing="fail")  # fmt: skip
    assert report.imported == len(ids) and not report.missing
    with FeatureStore(tmp_path / "store.h5") as store, h5py.File(root / "feat" / R.ACTIVITYNET_FEATURES, "r") as raw:
        a = store.get(ids[0])
        assert a.dtype == np.float32 and np.array_equal(a, raw[ids[0]]["c3d_features"][()].astype(np.float32))


def test_glove_like_file(tmp_path: Path) -> None:
    from fian.data.text import Vocab, read_glove

    words = ["person", "kitchen", "the", "walks", "ball"]
    info = R.write_glove_like(tmp_path / "g.txt", words, lines=400, dim=300, seed=1)
    lines = (tmp_path / "g.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 400 == info["lines"] and info["bytes"] == (tmp_path / "g.txt").stat().st_size
    heads = [line.rsplit(" ", 300)[0] for line in lines]
    assert sorted(h for h in heads if h in words) == sorted(words)  # each word exactly once
    assert lines[200].startswith(". . . ") and info["spaced_line"] == 201
    values = np.array([line.rsplit(" ", 300)[1:] for line in lines], dtype=np.float64)  # [400, 300]
    assert values.shape == (400, 300) and np.isfinite(values).all()
    fields = lines[3].rsplit(" ", 300)[1:]  # at most 5 significant digits, as 840B prints them
    assert all(float(f"{float(v):.5g}") == float(v) for v in fields)
    assert sum(float(f"{float(v):.4g}") != float(v) for v in fields) > 200
    rows = {h: i for i, h in enumerate(heads) if h in words}
    assert max(rows.values()) - min(rows.values()) > 100  # spread over the file, not bunched at its head
    hits = read_glove(tmp_path / "g.txt", Vocab(words), dim=300)
    assert len(hits.vectors) == len(words) and hits.lines == 400
    own = [values[rows[w]] for w in words]  # each word has a vector of its own
    assert min(math.dist(a, b) for i, a in enumerate(own) for b in own[i + 1 :]) > 1
    with pytest.raises(ValueError, match="filler"):
        R.write_glove_like(tmp_path / "bad.txt", ["12filler"], lines=10)
    assert not (tmp_path / "bad.txt").exists()


def test_bench_measures_one_stage_in_its_own_process(written: dict, tmp_path: Path) -> None:
    """bench.scale's wrapper: /usr/bin/time -v and /proc/self/io of the stage process itself."""
    if not Path("/usr/bin/time").is_file() or not Path("/proc/self/io").is_file():
        pytest.skip("needs /usr/bin/time and /proc/<pid>/io")
    from bench import scale

    data = tmp_path / "data"
    (data / "raw" / "tacos").mkdir(parents=True)
    (data / "raw" / "tacos" / "annotations").symlink_to(written["root"] / "tacos" / "ann")
    logs = tmp_path / "logs"
    logs.mkdir()
    row = scale.run_stage("annotations", "tacos", data, logs)
    out = data / "interim" / "tacos" / "annotations"
    assert row["output_bytes"] == sum(p.stat().st_size for p in out.iterdir()) > 0
    inputs = sum(p.stat().st_size for p in (written["root"] / "tacos" / "ann").iterdir())
    assert row["rchar"] >= inputs and row["wchar"] >= row["output_bytes"]
    assert 50 < row["max_rss_mib"] < 4096 and row["wall_s"] > 0
