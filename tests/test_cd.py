"""Charades-CD end to end on its tiny twin (params/datasets/charades_cd_mini.yaml): the real stage
mains in-process, on a re-split written in Charades-CD's JSON format from the generated charades_mini
release, reading charades_mini's feature store (dataset.features_from).  Checked by independent
means: the twin's pair counts worked out from the written files, the real release's record keys
(../shared), each metrics file recomputed from its predictions file with a plain loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fian.config import load_config
from fian.data.releases import write_cd_release
from fian_pipeline import annotations as annotations_stage
from fian_pipeline import baseline as baseline_stage
from fian_pipeline import evaluate as evaluate_stage
from fian_pipeline import features as features_stage
from fian_pipeline import generate as generate_stage
from fian_pipeline import prepare as prepare_stage
from fian_pipeline import text as text_stage
from fian_pipeline import train as train_stage

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params"
TESTS = ("test_iid", "test_ood")


@pytest.fixture(scope="module")
def cd_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """charades_mini: generate + annotations + features (its store); the CD twin: written from
    charades_mini's tables, then annotations, text, prepare (charades_mini's store), train, evaluate
    and the moment prior on both test splits."""
    root = tmp_path_factory.mktemp("cd")
    off = root / "off.yaml"
    off.write_text("tracking: {enabled: false}\n")
    mini = ["--params", str(PARAMS / "base.yaml"), str(PARAMS / "datasets/charades_mini.yaml"), str(off)]
    cd = ["--params", str(PARAMS / "base.yaml"), str(PARAMS / "datasets/charades_cd_mini.yaml"), str(off)]
    fian = [*cd[:-1], str(PARAMS / "variants/fian.yaml"), str(off)]
    assert generate_stage.main([*mini, "--annotations-out", str(root / "raw/ann"), "--features-out", str(root / "raw/feat")]) == 0
    assert annotations_stage.main([*mini, "--raw", str(root / "raw/ann"), "--out", str(root / "mini_ann")]) == 0
    assert features_stage.main([*mini, "--raw", str(root / "raw/feat"), "--annotations", str(root / "mini_ann"),
                                "--out", str(root / "features.h5")]) == 0  # fmt: skip
    cfg = load_config(PARAMS / "base.yaml", PARAMS / "datasets/charades_cd_mini.yaml")
    tables = {s: pd.read_parquet(root / f"mini_ann/{s}.parquet") for s in ("train", "test")}
    write_cd_release(tables, root / "cd_raw", fmt=cfg.dataset.format, splits=cfg.dataset.splits)
    assert annotations_stage.main([*cd, "--raw", str(root / "cd_raw"), "--out", str(root / "ann")]) == 0
    assert text_stage.main([*cd, "--annotations", str(root / "ann"), "--out", str(root / "text")]) == 0
    assert prepare_stage.main([*cd, "--annotations", str(root / "ann"), "--features", str(root / "features.h5"),
                               "--text", str(root / "text"), "--out", str(root / "data")]) == 0  # fmt: skip
    data = ["--data", str(root / "data"), "--text", str(root / "text")]
    assert train_stage.main([*fian, *data, "--out", str(root / "fian"), "--device", "cpu"]) == 0
    for split in TESTS:
        assert evaluate_stage.main([*fian, *data, "--checkpoint", str(root / "fian/checkpoint.pt"), "--split", split,
                                    "--out", str(root / "fian"), "--device", "cpu"]) == 0  # fmt: skip
        assert baseline_stage.main([*cd, "--data", str(root / "data"), "--split", split, "--out", str(root / "prior")]) == 0
    return {"root": root}


def test_twin_counts_and_the_pair_outside_its_video(cd_run: dict[str, Path]) -> None:
    """The annotations stage keeps every pair of the written files (the one starting after its video's
    end included); prepare drops exactly that pair, loudly counted; the store is charades_mini's."""
    root = cd_run["root"]
    written = {s: sum(len(r["sentences"]) for r in json.loads((root / f"cd_raw/charades_{s}.json").read_text()).values())
               for s in ("train", "val", *TESTS)}  # fmt: skip
    mini = sum(len(pd.read_parquet(root / f"mini_ann/{s}.parquet")) for s in ("train", "test"))
    assert sum(written.values()) == mini + 1  # every charades_mini pair once, plus the one past the end
    counts = json.loads((root / "ann/counts.json").read_text())["splits"]
    assert {s: c["pairs_kept"] for s, c in counts.items()} == written
    assert counts["test_ood"]["outside_video_kept"] == 1
    prepared = json.loads((root / "data/counts.json").read_text())["splits"]
    assert prepared["test_ood"]["dropped_outside_video"] == 1
    assert {s: c["queries_out"] for s, c in prepared.items()} == {**written, "test_ood": written["test_ood"] - 1}
    assert not (root / "data/test.h5").exists() and all((root / f"data/{s}.h5").exists() for s in written)


def test_twin_has_the_real_release_keys(cd_run: dict[str, Path], shared_annotations: Path) -> None:
    real = json.loads((shared_annotations / "charades-cd/charades_val.json").read_text())
    twin = json.loads((cd_run["root"] / "cd_raw/charades_val.json").read_text())
    types = lambda rec: {k: type(v) for k, v in rec.items()}  # noqa: E731
    assert types(next(iter(twin.values()))) == types(next(iter(real.values())))


def test_selection_on_val_and_metrics_on_both_test_splits(cd_run: dict[str, Path]) -> None:
    """The best epoch is picked on val; every metrics file (FIAN and the prior, test_iid and test_ood)
    holds R@n,IoU=m, mIoU and dR@n,IoU=m that a plain loop over its predictions file reproduces."""
    root = cd_run["root"]
    info = json.loads((root / "fian/train_info.json").read_text())
    assert info["best_by"].startswith("val/")
    for run in ("fian", "prior"):
        for split in TESTS:
            m = json.loads((root / f"{run}/metrics_{split}.json").read_text())
            preds = [json.loads(line) for line in (root / f"{run}/predictions_{split}.jsonl").read_text().splitlines()]
            assert len(preds) == m["n_queries"] and json.loads((root / f"{run}/info_{split}.json").read_text())["split"] == split
            hits, disc, ious = [], [], []
            for p in preds:  # top-1 by hand: R@1,IoU=0.5 (hit: IoU > m, eval.iou_rule gt), dR@1, mIoU
                (s, e), (gs, ge), d = p["segments"][0], p["gt"], p["duration"]
                inter = max(0.0, min(e, ge) - max(s, gs))
                iou = inter / ((e - s) + (ge - gs) - inter)
                ious.append(iou)
                hits.append(iou > 0.5)
                disc.append((iou > 0.5) * (1 - abs(s - gs) / d) * (1 - abs(e - ge) / d))
            assert m["R@1,IoU=0.5"] == pytest.approx(np.mean(hits))
            assert m["dR@1,IoU=0.5"] == pytest.approx(np.mean(disc))
            assert m["mIoU"] == pytest.approx(np.mean(ious), abs=1e-6)
            assert all(m[f"dR@{n},IoU={t:g}"] <= m[f"R@{n},IoU={t:g}"] for n in (1, 5) for t in (0.1, 0.3, 0.5, 0.7))


def test_a_test_split_without_its_file_names_it(cd_run: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(cd_run["root"] / "cd_raw", raw)
    (raw / "charades_test_ood.json").unlink()
    cd = ["--params", str(PARAMS / "base.yaml"), str(PARAMS / "datasets/charades_cd_mini.yaml")]
    with pytest.raises(FileNotFoundError, match=r"charades_test_ood.json: annotation file of split 'test_ood' not found"):
        annotations_stage.main([*cd, "--raw", str(raw), "--out", str(tmp_path / "ann")])
    assert not (tmp_path / "ann").exists()
