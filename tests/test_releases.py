"""The tiny generated releases of the rehearsal (fian/data/releases.py, params/datasets/*_mini.yaml).

Checked by independent means: the structure of every generated file against the REAL release
file in ../shared (same record keys and value types, same line/CSV layout), then the project's own
parsers and importers reading the generated files through the generate -> annotations ->
features stages, with the quirk counts and units worked out by hand.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from fian.config import load_config
from fian_pipeline import annotations as annotations_stage
from fian_pipeline import features as features_stage
from fian_pipeline import generate as generate_stage

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params"
REAL = {"activitynet": "activitynet", "tacos": "tacos", "charades": "charades-sta"}


def _layers(dataset: str) -> list[str]:
    return [str(PARAMS / "base.yaml"), str(PARAMS / "datasets" / f"{dataset}_mini.yaml")]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """generate + annotations + features of the three tiny releases (the real stage mains)."""
    out = {}
    for d in REAL:
        root = tmp_path_factory.mktemp(d)
        params = ["--params", *_layers(d)]
        raw_a, raw_f, ann, store = root / "raw/ann", root / "raw/feat", root / "interim/ann", root / "features.h5"
        assert generate_stage.main([*params, "--annotations-out", str(raw_a), "--features-out", str(raw_f)]) == 0
        assert annotations_stage.main([*params, "--raw", str(raw_a), "--out", str(ann)]) == 0
        assert features_stage.main([*params, "--raw", str(raw_f), "--annotations", str(ann), "--out", str(store)]) == 0
        out[d] = root
    return out


def _types(rec: dict) -> dict[str, type]:
    return {k: type(v) for k, v in rec.items()}


@pytest.mark.parametrize("dataset", ["activitynet", "tacos"])
def test_json_records_have_the_real_release_keys_and_types(
    generated: dict[str, Path], shared_annotations: Path, dataset: str
) -> None:
    cfg = load_config(*_layers(dataset))
    for split, (name,) in cfg.dataset.splits.items():
        real = json.loads((shared_annotations / REAL[dataset] / name).read_text())
        ours = json.loads((generated[dataset] / "raw/ann" / name).read_text())
        real_rec, our_rec = next(iter(real.values())), next(iter(ours.values()))
        assert set(our_rec) == set(real_rec), (split, name)
        for key in ("timestamps", "sentences"):
            assert isinstance(our_rec[key], list) and isinstance(our_rec[key][0], type(real_rec[key][0]))
        if dataset == "tacos":  # frames: integers; the release's fps
            assert all(isinstance(f, int) for pair in our_rec["timestamps"] for f in pair)
            assert isinstance(our_rec["num_frames"], int) and our_rec["fps"] == real_rec["fps"] == 29.4
            assert all(re.fullmatch(r"s\d\d-d\d\d\.avi", k) for k in ours) and all(k.endswith(".avi") for k in real)
        else:
            assert all(re.fullmatch(r"v_[A-Za-z0-9_-]{11}", k) for k in ours)
            assert all(re.fullmatch(r"v_[A-Za-z0-9_-]{11}", k) for k in list(real)[:50])
            # the release's quirk: sentences after the first start with a space
            assert our_rec["sentences"][1].startswith(" ") and real_rec["sentences"][1].startswith(" ")


def test_charades_files_have_the_real_release_layout(generated: dict[str, Path], shared_annotations: Path) -> None:
    line = re.compile(r"^[0-9A-Z]{5} \d+\.\d \d+\.\d##\S.*\.$")
    for split in ("train", "test"):
        ours = (generated["charades"] / f"raw/ann/charades_sta_{split}.txt").read_text().splitlines()
        real = (shared_annotations / "charades-sta" / f"charades_sta_{split}.txt").read_text().splitlines()
        assert all(line.match(x) for x in real[:200])  # the pattern describes the release
        assert all(line.match(x) for x in ours), [x for x in ours if not line.match(x)][:3]
        with (shared_annotations / "charades-sta" / f"Charades_v1_{split}.csv").open(newline="") as f:
            real_cols = csv.DictReader(f).fieldnames
        with (generated["charades"] / f"raw/ann/Charades_v1_{split}.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == real_cols
        assert any("," in r["script"] for r in rows)  # quoted fields with commas, as the release
        ids = {x.split()[0] for x in ours}
        assert ids == {r["id"] for r in rows}
        for vid in ids:  # i3d_npy: one [n, 1024] float32 file per video, no pickle
            a = np.load(generated["charades"] / "raw/feat" / f"{vid}.npy", allow_pickle=False)
            assert a.ndim == 2 and a.shape[1] == 1024 and a.dtype == np.float32


def test_feature_files_are_the_release_layouts(generated: dict[str, Path]) -> None:
    with h5py.File(generated["activitynet"] / "raw/feat/sub_activitynet_v1-3.c3d.hdf5", "r") as f:
        vid = next(iter(f))
        assert isinstance(f[vid], h5py.Group) and list(f[vid]) == ["c3d_features"]
        assert f[vid]["c3d_features"].shape[1] == 500 and f.attrs["synthetic"]
    with h5py.File(generated["tacos"] / "raw/feat/tall_c3d_features.hdf5", "r") as f:
        vid = next(iter(f))
        assert vid.endswith(".avi") and isinstance(f[vid], h5py.Dataset) and f[vid].shape[1] == 4096


@pytest.mark.parametrize("dataset", sorted(REAL))
def test_real_parsers_read_them_with_the_policies_applied(generated: dict[str, Path], dataset: str) -> None:
    cfg = load_config(*_layers(dataset))
    spec = cfg.dataset.synthetic
    counts = json.loads((generated[dataset] / "interim/ann/counts.json").read_text())["splits"]
    assert set(counts) == set(cfg.dataset.splits) == set(spec["n_videos"])
    for split, c in counts.items():
        n = spec["n_videos"][split] * spec["queries_per_video"]
        quirks = 2 if split == "train" else 0  # one reversed moment, one past the end, in train only
        assert c["pairs_raw"] == n + quirks, (split, c)
        assert c["start_ge_end"] == (1 if split == "train" else 0) and c["past_end"] == (1 if split == "train" else 0)
        assert c["pairs_kept"] == n + (1 if split == "train" else 0)  # the overlong one is clipped, kept
        assert c["videos_kept"] == spec["n_videos"][split]
    train = pd.read_parquet(generated[dataset] / "interim/ann/train.parquet")
    assert (train["end"] <= train["duration"]).all() and (train["start"] < train["end"]).all()
    imported = json.loads((generated[dataset] / "features.counts.json").read_text())
    assert imported["imported"] == sum(spec["n_videos"].values()) and imported["matched"] == {
        "exact": imported["imported"]
    }


@pytest.mark.parametrize("dataset", sorted(REAL))
def test_parsed_moments_are_the_generated_ones(generated: dict[str, Path], dataset: str) -> None:
    """Through each release's units (TACoS frames at 29.4 fps, Charades 0.1 s, ActivityNet 0.01 s)
    the parsed seconds are the generator's moments, to the release's resolution."""
    from fian.data.synthetic import SyntheticSpec, generate

    cfg = load_config(*_layers(dataset))
    ds = generate(SyntheticSpec.from_dict(cfg.dataset.synthetic, cfg.dataset.feature_dim), cfg.dataset.feature_dim)
    meta = json.loads((generated[dataset] / f"raw/ann/{dataset}_mini_meta.json").read_text())["videos"]
    resolution = {"tacos": 0.5 / 29.4, "charades": 0.05, "activitynet": 0.005}[dataset] + 1e-9
    table = pd.read_parquet(generated[dataset] / "interim/ann/test.parquet")
    by_generated = {v.video_id: v for v in ds.splits["test"]}
    for vid, rows in table.groupby("video_id", sort=True):
        video = by_generated[meta[vid]["generated_id"]]
        assert abs(rows["duration"].iat[0] - video.duration) <= resolution
        got = sorted(zip(rows["start"], rows["end"], strict=True))
        want = sorted((q.start, q.end) for q in video.queries)
        assert len(got) == len(want)
        for (s, e), (ws, we) in zip(got, want, strict=True):
            assert abs(s - ws) <= resolution and abs(e - we) <= resolution, (vid, (s, e), (ws, we))


def test_a_release_with_a_wrong_layout_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {feature_layout: tacos_c3d}\n")
    from fian_pipeline.common import StageError

    with pytest.raises(StageError, match="feature_layout.*i3d_npy"):
        generate_stage.main(["--params", *_layers("charades"), str(bad), "--annotations-out",
                             str(tmp_path / "a"), "--features-out", str(tmp_path / "f")])  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "f").exists()
