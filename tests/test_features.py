"""Feature store, importers of the released layouts, downsampling and the step <-> seconds mapping."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from fian.data.features import (
    FeatureError,
    FeatureStore,
    covering_steps,
    downsample,
    import_features,
    seconds_to_steps,
    steps_to_seconds,
    write_store,
)

RNG = np.random.default_rng(0)


def _items(n: int = 3, dim: int = 6):
    return [(f"v{i}", RNG.normal(size=(5 + i, dim)).astype(np.float32), {"fps": 0.5 + i}) for i in range(n)]


# ------------------------------------------------------------------------------------- store


def test_store_round_trip(tmp_path: Path) -> None:
    items = _items()
    path = tmp_path / "store.h5"
    n = write_store(path, items, backbone="c3d", feature_dim=6, attrs={"source": "test"})
    assert n == 3
    with FeatureStore(path) as store:
        assert store.ids() == ["v0", "v1", "v2"] and len(store) == 3
        assert "v1" in store and "nope" not in store and "a/b" not in store
        assert store.attrs == {"backbone": "c3d", "feature_dim": 6, "random_weights": False, "source": "test"}
        for vid, arr, attrs in items:
            got = store.get(vid)
            assert got.dtype == np.float32 and np.array_equal(got, arr)
            assert store.video_attrs(vid) == attrs
        with pytest.raises(KeyError, match="nope"):
            store.get("nope")
    assert [p.name for p in tmp_path.iterdir()] == ["store.h5"]  # no temp file left behind


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.array([[0.0, np.nan, 0, 0, 0, 0]]), "non-finite"),
        (np.array([[0.0, np.inf, 0, 0, 0, 0]]), "non-finite"),
        (np.zeros((3, 5)), "dimension 5 != expected 6"),
        (np.zeros((0, 6)), "no feature rows"),
        (np.zeros(6), r"must be \[n, D\]"),
    ],
)
def test_write_store_rejects_bad_features_and_leaves_nothing(
    tmp_path: Path, bad: np.ndarray, match: str
) -> None:
    path = tmp_path / "store.h5"
    items = [*_items(2), ("bad_video", bad, None)]
    with pytest.raises(FeatureError, match=match) as e:
        write_store(path, items, backbone="c3d", feature_dim=6)
    assert str(path) in str(e.value) and "bad_video" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("vid", ["a/b", ""])
def test_write_store_rejects_unsafe_ids(tmp_path: Path, vid: str) -> None:
    with pytest.raises(FeatureError, match="cannot be an HDF5 dataset name"):
        write_store(tmp_path / "s.h5", [(vid, np.zeros((2, 6)), None)], backbone="c3d", feature_dim=6)
    assert list(tmp_path.iterdir()) == []


def test_write_store_rejects_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(FeatureError, match="given twice"):
        write_store(tmp_path / "s.h5", [("a", np.zeros((2, 6)), None)] * 2, backbone="c3d", feature_dim=6)


def test_truncated_store_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "store.h5"
    write_store(path, _items(), backbone="c3d", feature_dim=6)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FeatureError, match="truncated or corrupt") as e:
        FeatureStore(path)
    assert str(path) in str(e.value)
    path.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(FeatureError, match=str(path)):
        FeatureStore(path)


def test_missing_store_and_foreign_hdf5(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        FeatureStore(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros((2, 2))
    with pytest.raises(FeatureError, match=r"other.h5: not a feature store"):
        FeatureStore(tmp_path / "other.h5")


@pytest.mark.parametrize(
    ("bad", "match"), [(np.full((2, 6), np.nan), "non-finite"), (np.zeros((2, 4)), "dimension 4")]
)
def test_store_reader_checks_each_video(tmp_path: Path, bad: np.ndarray, match: str) -> None:
    path = tmp_path / "store.h5"
    write_store(path, _items(1), backbone="c3d", feature_dim=6)
    with h5py.File(path, "a") as f:  # written behind the writer's back
        f["broken"] = bad
    with FeatureStore(path) as store:
        store.get("v0")
        with pytest.raises(FeatureError, match=match) as e:
            store.get("broken")
    assert str(path) in str(e.value) and "broken" in str(e.value)


# ------------------------------------------------------------------------------------- importers


def _write_release(raw: Path, layout: str, feats: dict[str, np.ndarray], name: str | None = None) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    if layout == "i3d_npy":
        for vid, a in feats.items():
            np.save(raw / f"{vid}.npy", a)
        return
    default = {"activitynet_c3d": "sub_activitynet_v1-3.c3d.hdf5", "tacos_c3d": "tall_c3d_features.hdf5"}
    with h5py.File(raw / (name or default.get(layout, "features.hdf5")), "w") as f:
        for vid, a in feats.items():
            if layout == "activitynet_c3d":
                f.create_group(vid).create_dataset("c3d_features", data=a)
            else:
                f[vid] = a


@pytest.mark.parametrize(
    ("layout", "dim"), [("activitynet_c3d", 500), ("tacos_c3d", 4096), ("i3d_npy", 1024), ("i3d_hdf5", 1024)]
)
def test_import_each_layout(tmp_path: Path, layout: str, dim: int) -> None:
    feats = {f"vid{i}": RNG.normal(size=(4 + i, dim)).astype(np.float32) for i in range(3)}
    _write_release(tmp_path / "raw", layout, feats)
    out = tmp_path / "store.h5"
    wanted = ["vid0", "vid2"]  # vid1 is in the release but not referenced by the annotations
    report = import_features(
        tmp_path / "raw", wanted, out, layout=layout, feature_dim=dim, backbone="c3d",
        durations={"vid0": 8.0, "vid2": 12.0},
    )  # fmt: skip
    assert (report.requested, report.imported, report.missing) == (2, 2, [])
    with FeatureStore(out) as store:
        assert store.ids() == wanted
        for vid in wanted:
            assert np.array_equal(store.get(vid), feats[vid])
        assert store.video_attrs("vid2")["fps"] == pytest.approx(6 / 12.0)
        assert store.attrs["source"].startswith(layout) and store.attrs["random_weights"] is False


def test_import_tacos_ids_with_and_without_extension(tmp_path: Path) -> None:
    """TACoS annotation ids end in '.avi'. The 2D-TAN loader indexes tall_c3d_features.hdf5 with the id
    unchanged; other re-releases key by the bare stem. Both are matched; the store keeps the annotation id."""
    a, b = RNG.normal(size=(5, 16)).astype(np.float32), RNG.normal(size=(7, 16)).astype(np.float32)
    _write_release(tmp_path / "raw", "tacos_c3d", {"s13-d21.avi": a, "s14-d22": b})
    out = tmp_path / "store.h5"
    report = import_features(tmp_path / "raw", ["s13-d21.avi", "s14-d22.avi"], out, layout="tacos_c3d",
                             feature_dim=16, backbone="c3d")  # fmt: skip
    assert report.matched == {"exact": 1, "stem": 1}
    with FeatureStore(out) as store:
        assert store.ids() == ["s13-d21.avi", "s14-d22.avi"]
        assert np.array_equal(store.get("s14-d22.avi"), b)


def test_import_any_file_name_and_store_layout(tmp_path: Path) -> None:
    """Bring your own dataset: any single HDF5 in the raw folder; our own store re-imported keeps its tags."""
    feats = {"x": RNG.normal(size=(3, 8)).astype(np.float32)}
    _write_release(tmp_path / "raw", "i3d_hdf5", feats, name="my_features.h5")
    import_features(
        tmp_path / "raw", ["x"], tmp_path / "a.h5", layout="i3d_hdf5", feature_dim=8, backbone="i3d"
    )
    src = tmp_path / "mine" / "store.h5"
    write_store(
        src, [("x", feats["x"], {"fps": 2.0})], backbone="i3d", feature_dim=8, attrs={"random_weights": True}
    )
    import_features(src.parent, ["x"], tmp_path / "b.h5", layout="store", feature_dim=8, backbone="i3d")
    with FeatureStore(tmp_path / "b.h5") as store:
        assert store.attrs["random_weights"] is True and store.video_attrs("x") == {"fps": 2.0}
    (tmp_path / "raw" / "second.hdf5").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="single"):
        import_features(
            tmp_path / "raw", ["x"], tmp_path / "c.h5", layout="i3d_hdf5", feature_dim=8, backbone="i3d"
        )


def test_import_missing_video_per_policy(tmp_path: Path) -> None:
    _write_release(tmp_path / "raw", "i3d_hdf5", {"a": np.ones((3, 4))})
    out = tmp_path / "store.h5"
    with pytest.raises(
        FeatureError, match=r"features.hdf5: 1 annotated video\(s\) have no features: 'ghost'"
    ):
        import_features(
            tmp_path / "raw", ["a", "ghost"], out, layout="i3d_hdf5", feature_dim=4, backbone="i3d"
        )
    assert not out.exists()
    report = import_features(
        tmp_path / "raw",
        ["a", "ghost"],
        out,
        layout="i3d_hdf5",
        feature_dim=4,
        backbone="i3d",
        missing="drop",
    )
    assert (report.imported, report.missing) == (1, ["ghost"])
    assert report.to_dict()["missing_features"] == 1


def test_import_bad_release_data(tmp_path: Path) -> None:
    _write_release(tmp_path / "raw", "activitynet_c3d", {"a": np.full((3, 4), np.inf)})
    with pytest.raises(FeatureError, match=r"video 'a': .*non-finite"):
        import_features(
            tmp_path / "raw",
            ["a"],
            tmp_path / "s.h5",
            layout="activitynet_c3d",
            feature_dim=4,
            backbone="c3d",
        )
    with pytest.raises(FeatureError, match="dimension 4 != expected 500"):
        import_features(
            tmp_path / "raw",
            ["a"],
            tmp_path / "s.h5",
            layout="activitynet_c3d",
            feature_dim=500,
            backbone="c3d",
        )
    assert not (tmp_path / "s.h5").exists()
    raw2 = tmp_path / "raw2"
    _write_release(
        raw2, "i3d_hdf5", {"a": np.ones((3, 4))}, name="tall_c3d_features.hdf5"
    )  # not a group per video
    with pytest.raises(FeatureError, match="expected a group"):
        import_features(
            raw2, ["a"], tmp_path / "s.h5", layout="activitynet_c3d", feature_dim=4, backbone="c3d"
        )
    (raw2 / "tall_c3d_features.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)  # truncated
    with pytest.raises(FeatureError, match="tall_c3d_features.hdf5: not a readable HDF5"):
        import_features(raw2, ["a"], tmp_path / "s.h5", layout="tacos_c3d", feature_dim=4, backbone="c3d")


def test_features_stage(tmp_path: Path, repo_root: Path) -> None:
    from fian_pipeline.features import counts_path, main

    _write_release(tmp_path / "raw", "activitynet_c3d", {"v_a": np.ones((9, 500)), "v_b": np.ones((4, 500))})
    ann = tmp_path / "ann"
    ann.mkdir()
    for split, vids in (("train", ["v_a", "v_a"]), ("val", ["v_b", "v_b"]), ("test", ["v_b", "v_gone"])):
        pd.DataFrame({"video_id": vids, "duration": [30.0, 12.0], "start": [0.0, 1.0], "end": [2.0, 3.0],
                      "sentence": ["x", "y"], "split": split, "source": "f:k"}).to_parquet(ann / f"{split}.parquet")  # fmt: skip
    params = [
        str(repo_root / "params" / "base.yaml"),
        str(repo_root / "params" / "datasets" / "activitynet.yaml"),
    ]
    out = tmp_path / "interim" / "features.h5"
    argv = ["--params", *params, "--raw", str(tmp_path / "raw"), "--annotations", str(ann), "--out", str(out)]
    with pytest.raises(FeatureError, match="v_gone"):
        main(argv)
    assert not out.exists()
    drop = tmp_path / "drop.yaml"
    drop.write_text("dataset:\n  policy:\n    missing_features: drop\n")
    argv[1 + len(params) : 1 + len(params)] = [str(drop)]
    assert main(argv) == 0
    with FeatureStore(out) as store:
        assert store.ids() == ["v_a", "v_b"]
        assert store.video_attrs("v_a")["fps"] == pytest.approx(9 / 30.0)
    counts = pd.read_json(counts_path(out), typ="series")
    assert (
        counts["missing_features"] == 1 and counts["missing_ids"] == ["v_gone"] and counts["policy"] == "drop"
    )


# ------------------------------------------------------------------------------------- downsampling


def test_downsample_longer_is_segment_mean_by_hand() -> None:
    x = np.arange(10, dtype=np.float32)[:, None] * np.array([[1.0, -2.0]], dtype=np.float32)  # [10, 2]
    out, mask = downsample(x, 4)
    # segments floor(i*10/4): [0,2) [2,5) [5,7) [7,10)
    want = np.array([np.mean([0, 1]), np.mean([2, 3, 4]), np.mean([5, 6]), np.mean([7, 8, 9])])
    assert np.allclose(out[:, 0], want) and np.allclose(out[:, 1], -2 * want) and mask.all()
    out, _ = downsample(np.arange(7, dtype=np.float32)[:, None], 3)
    assert np.allclose(out[:, 0], [np.mean([0, 1]), np.mean([2, 3]), np.mean([4, 5, 6])])
    assert out.dtype == np.float32 and out.shape == (3, 1)


def test_downsample_shorter_repeats_nearest_and_equal_is_identity() -> None:
    x = np.array([[10.0], [20.0], [30.0]], dtype=np.float32)
    out, mask = downsample(x, 7)
    # step i centre (i + .5)/7 of the video lies in row floor((2i+1)*3/14)
    assert out[:, 0].tolist() == [10, 10, 20, 20, 20, 30, 30] and mask.all() and mask.shape == (7,)
    y = RNG.normal(size=(5, 3)).astype(np.float32)
    assert np.array_equal(downsample(y, 5)[0], y)
    with pytest.raises(ValueError, match="pad is not implemented"):
        downsample(x, 7, shorter="pad")
    with pytest.raises(ValueError, match=r"\[n >= 1, D\]"):
        downsample(np.zeros((0, 3)), 4)


def test_downsample_long_real_size_matches_loop() -> None:
    n, T = 1537, 200
    x = RNG.normal(size=(n, 8)).astype(np.float32)
    out, _ = downsample(x, T)
    for i in (0, 1, 99, 199):
        s = i * n // T
        e = max(s + 1, (i + 1) * n // T)
        assert np.allclose(out[i], x[s:e].mean(0), atol=1e-5)


def test_step_seconds_mapping() -> None:
    duration, T = 120.0, 64
    # step i spans [i, i+1) * duration / T
    assert steps_to_seconds(np.arange(T + 1), duration, T)[[0, 1, T]].tolist() == [0.0, 1.875, 120.0]
    start, end = 30.0, 47.0  # -> steps 16.0 .. 25.0667
    s, e = seconds_to_steps(np.array([start, end]), duration, T)
    assert s == pytest.approx(16.0) and e == pytest.approx(25.0667, abs=1e-4)
    assert covering_steps(start, end, duration, T) == (16, 26)
    assert np.allclose(
        steps_to_seconds(seconds_to_steps(np.array([start, end]), duration, T), duration, T), [start, end]
    )
    # a moment inside one step covers exactly that step; the end of the video is the last step
    assert covering_steps(2.0, 3.0, duration, T) == (1, 2)
    assert covering_steps(119.0, 120.0, duration, T) == (63, 64)
    # a feature event written over these seconds lands on these steps after downsampling
    n = 300
    rows = np.zeros((n, 1), dtype=np.float32)
    centre = (np.arange(n) + 0.5) * duration / n
    rows[(centre >= start) & (centre < end)] = 1.0
    out, _ = downsample(rows, T)
    first, last = covering_steps(start, end, duration, T)
    assert (
        np.all(out[first + 1 : last - 1, 0] == 1.0)
        and np.all(out[: first - 1, 0] == 0)
        and np.all(out[last + 1 :, 0] == 0)
    )


# -------------------------------------------- a store made by the extract stage, imported (issue 19 item 10)


def test_import_of_an_extracted_store_keeps_its_recipe(tmp_path: Path) -> None:
    """features: import of a store that fian extract wrote keeps the file attrs that say how to
    recompute the features (its "source" and the extraction settings); an imported store of another
    origin stays "store:<file>"; a backbone that contradicts dataset.backbone is an error."""
    recipe = {"source": "extract:c3d:fc7:backbone.pt", "clip_len": 16, "frames_per_feature": 8,
              "weights_sha256": "ab" * 32, "decode_fps": float("nan"), "random_weights": False}  # fmt: skip
    made = tmp_path / "extracted.h5"
    arrays = {"v0": np.ones((5, 6), np.float32), "v1": np.zeros((4, 6), np.float32)}
    write_store(made, ((k, a, {"video_fps": 25.0}) for k, a in arrays.items()), backbone="c3d", feature_dim=6, attrs=recipe)
    out = tmp_path / "imported.h5"
    import_features(made, ["v1"], out, layout="store", feature_dim=6, backbone="c3d", durations={"v1": 2.0})
    with FeatureStore(out) as s:
        attrs = s.attrs
        assert s.ids() == ["v1"] and s.video_attrs("v1") == {"video_fps": 25.0, "fps": 2.0}
    assert {k: attrs[k] for k in ("source", "clip_len", "frames_per_feature", "weights_sha256")} == {
        k: recipe[k] for k in ("source", "clip_len", "frames_per_feature", "weights_sha256")}  # fmt: skip
    assert np.isnan(attrs["decode_fps"]) and attrs["imported_from"] == "store:extracted.h5" and attrs["layout"] == "store"

    other = tmp_path / "other.h5"
    write_store(other, ((k, a, None) for k, a in arrays.items()), backbone="c3d", feature_dim=6,
                attrs={"source": "tacos_c3d:tall_c3d_features.hdf5"})  # fmt: skip
    import_features(other, ["v0"], tmp_path / "o.h5", layout="store", feature_dim=6, backbone="c3d")
    with FeatureStore(tmp_path / "o.h5") as s:
        assert s.attrs["source"] == "store:other.h5" and "clip_len" not in s.attrs

    with pytest.raises(FeatureError, match=r"extracted.h5: extracted with the c3d backbone .*dataset.backbone is 'i3d'"):
        import_features(made, ["v0"], tmp_path / "bad.h5", layout="store", feature_dim=6, backbone="i3d")
    assert not (tmp_path / "bad.h5").exists()
