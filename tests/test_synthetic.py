"""The synthetic default dataset: deterministic, word-level grounding, public layouts, not a prior's game."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fian.data.synthetic import FEATURES_FILE, META_FILE, SyntheticSpec, generate, write_synthetic

SPEC = SyntheticSpec(seed=3, n_videos={"train": 120, "test": 30})
DIM = 32


@pytest.fixture(scope="module")
def ds():
    return generate(SPEC, DIM)


def test_deterministic_from_seed(ds) -> None:
    again = generate(SPEC, DIM)
    for split in ds.splits:
        assert ds.annotations(split) == again.annotations(split)
        for a, b in zip(ds.splits[split], again.splits[split], strict=True):
            assert np.array_equal(a.features, b.features)
    other = generate(SyntheticSpec(seed=4, n_videos={"train": 120, "test": 30}), DIM)
    assert other.annotations("train") != ds.annotations("train")


def test_spec_validation() -> None:
    assert SyntheticSpec.from_dict({"seed": 1, "events": [4, 5]}, 64).events == (4, 5)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sed'\]"):
        SyntheticSpec.from_dict({"sed": 1}, 64)
    with pytest.raises(ValueError, match="events"):
        SyntheticSpec.from_dict({"events": [6, 5]}, 64)
    with pytest.raises(ValueError, match="at least 4 events"):
        SyntheticSpec.from_dict({"events": [2, 5]}, 64)


def _occurrences(video, attrs) -> list[int]:
    return [i for i, e in enumerate(video.events) if e.attrs == attrs]


def test_temporal_words_pick_the_right_occurrence(ds) -> None:
    kinds: dict[str, int] = {}
    for video in ds.splits["train"]:
        ev = video.events
        for q in video.queries:
            kinds[q.kind] = kinds.get(q.kind, 0) + 1
            target = ev[q.events[0]]
            if q.kind == "then":
                x, y = q.events
                assert y == x + 1 and (q.start, q.end) == (ev[x].start, ev[y].end)
                assert q.sentence == f"{ev[x].phrase()} then {ev[y].phrase()}"
                continue
            assert (q.start, q.end) == (target.start, target.end)
            occ = _occurrences(video, target.attrs)
            if q.kind == "unique":
                assert occ == [q.events[0]] and q.sentence == target.phrase()
            elif q.kind == "again":  # "... again" = the SECOND occurrence
                assert len(occ) >= 2 and q.events[0] == occ[1] and q.sentence == f"{target.phrase()} again"
            elif q.kind == "first":
                assert len(occ) >= 2 and q.events[0] == occ[0] and q.sentence.endswith("for the first time")
            elif q.kind == "after":  # "after X, Y": the first Y that starts after X ends
                x = ev[q.events[1]]
                assert _occurrences(video, x.attrs) == [q.events[1]]  # the anchor is unambiguous
                later = [i for i in occ if ev[i].start >= x.end]
                assert q.events[0] == later[0] and q.sentence == f"after {x.phrase()} , {target.phrase()}"
            elif q.kind == "before":  # "Y before X": the last Y that ends before X starts
                x = ev[q.events[1]]
                earlier = [i for i in occ if ev[i].end <= x.start]
                assert q.events[0] == earlier[-1] and q.sentence == f"{target.phrase()} before {x.phrase()}"
    assert set(kinds) == {"unique", "again", "first", "after", "before", "then"}
    assert min(kinds.values()) > 0.1 * sum(kinds.values())  # every kind is well represented


def test_events_share_attributes_and_features_show_them(ds) -> None:
    """Distractors differ in one attribute, and an event's rows are closer to its own prototypes."""
    from fian.data.synthetic import prototypes

    protos = prototypes(SPEC.seed, DIM)
    basis = np.concatenate(protos)  # [n_prototypes, D]
    ends = np.cumsum([len(p) for p in protos[:4]])
    spans = list(zip([0, *ends[:-1]], ends, strict=True))
    one_off = 0
    for video in ds.splits["train"]:
        attrs = [e.attrs for e in video.events]
        assert len(set(attrs)) == len(attrs) - 1  # exactly one tuple repeats
        one_off += any(sum(a != b for a, b in zip(x, y, strict=True)) == 1 for x in attrs for y in attrs)
        # each event's rows decode (least squares over all prototypes) to exactly the event's attributes
        v, n = video, video.features.shape[0]
        centre = (np.arange(n) + 0.5) * v.duration / n
        for e in v.events:
            rows = v.features[(centre >= e.start) & (centre < e.end)]
            if len(rows):
                coef = np.linalg.lstsq(basis.T, rows.mean(0), rcond=None)[0]
                assert [int(coef[lo:hi].argmax()) for lo, hi in spans] == list(e.attrs)
    assert one_off >= 0.8 * len(ds.splits["train"])


def test_a_moment_prior_cannot_solve_it(ds) -> None:
    """The best single query-independent moment (normalized grid search) gets few hits at IoU 0.5."""
    gt = np.array([(q.start / v.duration, q.end / v.duration) for v in ds.splits["train"] for q in v.queries])
    grid = np.linspace(0, 1, 51)
    s, e = np.meshgrid(grid, grid, indexing="ij")
    cand = np.stack([s[s < e], e[s < e]], 1)  # [C, 2]
    inter = np.clip(
        np.minimum(cand[:, None, 1], gt[None, :, 1]) - np.maximum(cand[:, None, 0], gt[None, :, 0]), 0, None
    )
    union = (cand[:, 1] - cand[:, 0])[:, None] + (gt[:, 1] - gt[:, 0])[None, :] - inter
    best = ((inter / union) >= 0.5).mean(1).max()
    assert best < 0.2, best
    lengths = gt[:, 1] - gt[:, 0]
    assert lengths.min() < 0.1 and lengths.max() > 0.3  # moments of very different lengths


def test_written_in_public_layouts(ds, tmp_path: Path) -> None:
    from fian.data.features import FeatureStore, import_features

    summary = write_synthetic(ds, tmp_path / "ann", tmp_path / "feat")
    assert summary["splits"]["train"]["queries"] == sum(len(v.queries) for v in ds.splits["train"])
    train = json.loads((tmp_path / "ann" / "train.json").read_text())
    vid = ds.splits["train"][0]
    assert train[vid.video_id] == {
        "duration": vid.duration,
        "timestamps": [[q.start, q.end] for q in vid.queries],
        "sentences": [q.sentence for q in vid.queries],
    }
    assert json.loads((tmp_path / "ann" / META_FILE).read_text())["videos"][vid.video_id]["split"] == "train"
    with h5py.File(tmp_path / "feat" / FEATURES_FILE, "r") as f:
        assert f.attrs["synthetic"] and np.array_equal(f[vid.video_id]["c3d_features"][()], vid.features)
    import_features(tmp_path / "feat", list(train), tmp_path / "store.h5", layout="activitynet_c3d",
                    feature_dim=DIM, backbone="synthetic")  # fmt: skip
    with FeatureStore(tmp_path / "store.h5") as store:
        assert len(store) == len(train) and store.attrs["synthetic"]
    raw_steps = [v.features.shape[0] for v in ds.splits["train"]]
    assert min(raw_steps) < 64 < max(raw_steps)  # both downsampling branches are exercised at T = 64


def test_generate_stage(tmp_path: Path, repo_root: Path) -> None:
    from fian_pipeline.common import StageError
    from fian_pipeline.generate import main

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        "dataset:\n  synthetic:\n    seed: 1\n    n_videos: {train: 4, val: 2, test: 2}  # layers merge per key\n"
    )
    params = repo_root / "params"
    args = ["--annotations-out", str(tmp_path / "ann"), "--features-out", str(tmp_path / "feat")]
    assert (
        main(
            [
                "--params",
                str(params / "base.yaml"),
                str(params / "datasets" / "synthetic.yaml"),
                str(tiny),
                *args,
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == [
        "synthetic_meta.json",
        "test.json",
        "train.json",
        "val.json",
    ]
    assert len(json.loads((tmp_path / "ann" / "train.json").read_text())) == 4
    with pytest.raises(StageError, match="dataset.synthetic is empty"):
        main(["--params", str(params / "base.yaml"), str(params / "datasets" / "tacos.yaml"), *args])
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  synthetic:\n    seeds: 1\n")
    with pytest.raises(StageError, match=r"bad.yaml: dataset.synthetic: unknown key"):
        main(
            [
                "--params",
                str(params / "base.yaml"),
                str(params / "datasets" / "synthetic.yaml"),
                str(bad),
                *args,
            ]
        )
