"""Tests from the mutation run over inference, predict, text and the training targets (issue 20
item 5; docs/MUTATION.md section 5).  Fast: no stage, no training; a checkpoint written by hand.

Expected values are computed here by hand or by a plain reference in the test (the ranking, NMS and
seconds conversion of Section 3.5 written as a Python loop), never by the code under test.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import D, T, tiny_config

from fian.predict import (
    BUNDLE_KEY,
    BUNDLE_VERSION,
    Moment,
    PredictError,
    Predictor,
    feature_recipe,
    make_bundle,
    not_recomputable_reason,
    predict_limits,
    short,
)

VOCAB = ["<pad>", "<unk>", "person", "opens", "the", "door", "walks", "away"]


# ----------------------------------------------------------------------------------------------
# A checkpoint written by hand: tiny FIAN (T = 32 steps, D = 16, windows 4/8/16), random weights
# ----------------------------------------------------------------------------------------------


def _cfg():
    cfg = tiny_config()
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, nms_threshold=0.4))


def _checkpoint(path: Path, **change) -> Path:
    from fian.model.build import build_model
    from fian.train import save_checkpoint

    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=len(VOCAB))
    with torch.no_grad():  # larger offsets and spread logits: NMS and clipping have work to do
        for name, p in model.named_parameters():
            if "offset" in name or "score" in name or "reg" in name:
                p.mul_(8.0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {"feature_source": "fian.data.synthetic", "synthetic": True, "backbone": ""}
    state = {"config": cfg.to_dict(), "model": sd, "best_model": sd, "epoch": 0,
             BUNDLE_KEY: make_bundle(cfg, VOCAB, attrs), **change}  # fmt: skip
    save_checkpoint(path, state)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("predict") / "checkpoint.pt")


@pytest.fixture(scope="module")
def predictor(ckpt: Path) -> Predictor:
    return Predictor.from_checkpoint(ckpt)


def _features(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def _plain_moments(logits, offsets, cand, valid, duration: float, thr: float, top: int) -> list[tuple[float, float, float]]:
    """Section 3.5 by hand: rank valid candidates by logit (ties by index), move by the offsets
    (steps), clip to [0, T] with end >= start, greedy NMS (IoU > thr suppresses), top k, seconds."""
    order = sorted((i for i in range(len(logits)) if valid[i]), key=lambda i: (-logits[i], i))
    kept: list[tuple[float, float, float]] = []
    for i in order:
        s = min(max(cand[i][0] + offsets[i][0], 0.0), T)
        e = max(min(max(cand[i][1] + offsets[i][1], 0.0), T), s)
        ok = True
        for ks, ke, _ in kept:
            inter = max(0.0, min(e, ke) - max(s, ks))
            union = max(e, ke) - min(s, ks)
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            kept.append((s, e, 1.0 / (1.0 + math.exp(-logits[i]))))
        if len(kept) == top:
            break
    return [(s * duration / T, e * duration / T, p) for s, e, p in kept]


# ----------------------------------------------------------------------------------------------
# Predictor: the model's answer, end to end in memory
# ----------------------------------------------------------------------------------------------


def test_predictions_equal_a_plain_reference_of_section_3_5(predictor: Predictor) -> None:
    x = _features(T)
    enc = predictor.encode_features(x, 20.0, name="clip")
    # T rows: kept as they are (no resampling), mask all True
    np.testing.assert_array_equal(enc.features.numpy(), x)
    assert enc.mask.dtype == torch.bool and bool(enc.mask.all()) and enc.mask.shape == (T,)
    assert (enc.duration, enc.n_features, enc.source, enc.sha256, enc.timings) == (20.0, T, "clip", None, {})
    queries = ["A person opens the door", "walks away, the person walks", "zebra door"]
    got = predictor.predict_many(queries, enc, top=4)
    ids = [[1, 2, 3, 4], [6, 7, 4, 2], [1, 5]]  # by hand from VOCAB (max_query_len 4: a last word dropped; a, zebra: <unk>)
    model = predictor.model
    thr = 0.4
    assert predictor.cfg.eval.nms_threshold == thr
    for q, row in enumerate(ids):
        with torch.no_grad():  # each query alone, unpadded: the batch must not change its answer
            out = model(torch.from_numpy(x)[None], torch.ones(1, T, dtype=torch.bool),
                        torch.tensor([row]), torch.ones(1, len(row), dtype=torch.bool))  # fmt: skip
        want = _plain_moments(out.logits[0].tolist(), out.offsets[0].tolist(), out.candidates.tolist(),
                              out.valid[0].tolist(), 20.0, thr, 4)  # fmt: skip
        assert len(want) == 4
        assert len(got[q]) == 4 and all(isinstance(m, Moment) for m in got[q])
        np.testing.assert_allclose([(m.start, m.end, m.score) for m in got[q]], want, rtol=1e-5, atol=1e-5)
        assert all(type(v) is float for m in got[q] for v in (m.start, m.end, m.score))
    alone = predictor.predict(queries[1], enc, top=4)  # the batch of one
    np.testing.assert_allclose([m.to_dict()["start"] for m in alone], [m.start for m in got[1]], atol=1e-5)
    np.testing.assert_allclose([m.to_dict()["score"] for m in alone], [m.score for m in got[1]], atol=1e-5)
    assert predictor.predict_many([], enc) == []
    # a path instead of an encoded video goes to encode_video (which refuses it here: features only)
    with pytest.raises(PredictError, match=r": this model's features cannot be recomputed from a video .* not clip\.mp4$"):
        predictor.predict("person", "clip.mp4")
    assert Moment(1.0, 2.5, 0.25).to_dict() == {"start": 1.0, "end": 2.5, "score": 0.25}
    assert alone[0].to_dict() == {"start": alone[0].start, "end": alone[0].end, "score": alone[0].score}


def test_top_beyond_the_candidates_and_the_default_top(predictor: Predictor) -> None:
    enc = predictor.encode_features(_features(T, seed=5), 8.0)
    everything = predictor.predict("person", enc, top=100)
    n_cand = sum(32 // w * 4 - 3 for w in (4, 8, 16))  # stride 0.25 x w: (T - w) / (w / 4) + 1 per window
    assert 5 < len(everything) <= n_cand
    assert predictor.predict("person", enc) == everything[:5]  # default top 5
    assert predictor.predict_many(["person"], enc) == [everything[:5]]
    scores = [m.score for m in everything]
    assert scores == sorted(scores, reverse=True)
    for a in range(len(everything)):  # the NMS held: no two kept windows overlap by IoU > 0.4
        for b in range(a):
            s1, e1, s2, e2 = everything[a].start, everything[a].end, everything[b].start, everything[b].end
            inter, union = max(0.0, min(e1, e2) - max(s1, s2)), max(e1, e2) - min(s1, s2)
            assert union == 0 or inter / union <= 0.4 + 1e-6


def test_short_and_long_features_are_resampled_as_the_prepare_stage_does(predictor: Predictor, caplog) -> None:
    assert predictor.min_rows == 8  # ceil(T = 32 / smallest window 4)
    x = _features(5)
    with caplog.at_level(logging.INFO, logger="fian.predict"):
        enc = predictor.encode_features(x, 3.0, name="tiny")
    # step i takes row floor((2i + 1) * 5 / 64): 0 for i < 6.4 ...
    rows = [(2 * i + 1) * 5 // 64 for i in range(T)]
    np.testing.assert_array_equal(enc.features.numpy(), x[rows])
    assert enc.n_features == 5
    assert ("tiny: 5 feature row(s), fewer than the 8 the smallest window spans: repeated to 32 steps "
            "(as the prepare stage does)") in caplog.text  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fian.predict"):
        predictor.encode_features(_features(8), 3.0, name="eight")
    assert "fewer than" not in caplog.text  # 8 rows = min_rows: no message
    # features.shorter from the checkpoint's config: 'pad' is refused by the downsampling, not read as 'repeat'
    pad = Predictor(predictor.model, dataclasses.replace(predictor.cfg, features=dataclasses.replace(
        predictor.cfg.features, shorter="pad")), {"vocab": VOCAB, "recipe": predictor.recipe})  # fmt: skip
    with pytest.raises(ValueError, match=r"^features\.shorter: pad is not implemented"):
        pad.encode_features(x, 3.0)
    long = _features(2 * T)
    enc = predictor.encode_features(long, 3.0)
    np.testing.assert_allclose(enc.features.numpy(), (long[0::2] + long[1::2]) / 2, rtol=1e-6, atol=1e-6)
    assert enc.source == "features"


# ----------------------------------------------------------------------------------------------
# Predictor: the limits and bad input, each message in full
# ----------------------------------------------------------------------------------------------


def test_short_cuts_long_values() -> None:
    assert short("abc") == "'abc'"
    assert short("x" * 58) == "'" + "x" * 58 + "'"  # 60 characters: kept
    assert short("x" * 59) == "'" + "x" * 59 + "... (61 characters)"
    assert short("abcdef", n=4) == "'abc... (8 characters)"


def test_predict_limits_override_and_refuse(predictor: Predictor) -> None:
    base = predictor.cfg.predict
    assert predict_limits(base) is base and predict_limits(base, {}) is base
    got = predict_limits(base, {"max_top": 7})
    assert got.max_top == 7 and got.max_rows == base.max_rows
    with pytest.raises(PredictError, match=r"^predict limits: expected a mapping of predict\.\* keys, got \[1\]$"):
        predict_limits(base, [1])
    with pytest.raises(PredictError, match=r"^predict limits: predict\.max_top: must be >= 1, got 0$"):
        predict_limits(base, {"max_top": 0})
    with pytest.raises(PredictError, match=r"^predict limits: predict\.max_top: expected an integer, got 'x'$"):
        predict_limits(base, {"max_top": "x"})
    with pytest.raises(PredictError, match=r"^predict limits: predict: unknown key\(s\) \['nope'\]; known: \['max_feature_rows'"):
        predict_limits(base, {"nope": 1})


def test_predictor_keeps_what_it_was_given(ckpt: Path, predictor: Predictor) -> None:
    assert predictor.device == torch.device("cpu") and predictor.checkpoint == ckpt and predictor.label == str(ckpt)
    assert predictor.backbone_weights is None and predictor.video_cache is None and predictor.cache_size == 16
    cache = object()
    p = Predictor.from_checkpoint(ckpt, backbone_weights="w.pth", video_cache=cache, label="model A")
    assert p.backbone_weights == Path("w.pth") and p.video_cache is cache and p.label == "model A"
    bare = Predictor(p.model, p.cfg, {"vocab": VOCAB, "recipe": p.recipe})  # the defaults: CPU, no checkpoint
    assert bare.device == torch.device("cpu") and bare.checkpoint == Path("") and bare.label == ""


def test_predictor_takes_the_best_weights_unless_asked(tmp_path: Path, predictor: Predictor, caplog) -> None:
    last = {k: v + 1.0 if v.is_floating_point() else v for k, v in predictor.model.state_dict().items()}
    path = _checkpoint(tmp_path / "two.pt", model=last)  # best_model: the fixture's weights; model: +1
    best, final = Predictor.from_checkpoint(path), Predictor.from_checkpoint(path, best=False)
    broken = _checkpoint(tmp_path / "broken.pt", config=None)
    with pytest.raises(PredictError, match=rf"^{re.escape(str(broken))}: cannot rebuild the model: checkpoint carries "
                       r"no config: cannot rebuild its model$"):  # fmt: skip
        Predictor.from_checkpoint(broken)
    rnd = _checkpoint(tmp_path / "random.pt", **{BUNDLE_KEY: make_bundle(_cfg(), VOCAB, {
        "feature_source": "extract:c3d:none", "backbone": "c3d", "random_weights": True})})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="fian.predict"):
        assert Predictor.from_checkpoint(rnd).random_weights is True
    assert caplog.messages == [f"{rnd}: the features of this model come from a c3d backbone with RANDOM weights "
                               "(offline fallback): its predictions say nothing about real videos"]  # fmt: skip
    name = next(k for k, v in last.items() if v.is_floating_point())
    assert torch.equal(best.model.state_dict()[name], predictor.model.state_dict()[name])
    assert torch.equal(final.model.state_dict()[name], last[name])


def test_check_top_messages(ckpt: Path) -> None:
    p = Predictor.from_checkpoint(ckpt, limits={"max_top": 3})
    assert p.check_top(3) == 3 and type(p.check_top(np.int64(1))) is int
    for bad, shown in ((True, "True"), (0, "0"), ("2", "'2'"), (1.0, "1.0")):
        with pytest.raises(PredictError, match=rf"^top must be an integer >= 1, got {re.escape(shown)}$"):
            p.check_top(bad)
    with pytest.raises(PredictError, match=r"^top 4 is over the limit predict\.max_top = 3$"):
        p.check_top(4)


def test_feature_limits_and_bad_features_are_named(ckpt: Path) -> None:
    p = Predictor.from_checkpoint(ckpt, limits={"max_feature_rows": 40, "max_file_bytes": 100})
    assert p.label == str(ckpt) and p.feature_dim == D
    with pytest.raises(PredictError, match=r"^f: features must be \[n >= 1, D\], got shape \(16,\)$"):
        p.encode_features(np.zeros(D), 1.0, name="f")
    with pytest.raises(PredictError, match=r"^f: features must be \[n >= 1, D\], got shape \(0, 16\)$"):
        p.encode_features(np.zeros((0, D)), 1.0, name="f")
    with pytest.raises(PredictError, match=r"^f: 41 feature rows, over the limit predict\.max_feature_rows = 40$"):
        p.encode_features(np.zeros((41, D)), 1.0, name="f")
    p.encode_features(np.zeros((40, D)), 1.0)  # at the limit: accepted
    assert p.encode_features(np.zeros((1, D)), 1.0).n_features == 1  # one row: accepted (repeated to T steps)
    msg = (rf"^f: features are 15-d, the model of {re.escape(str(ckpt))} takes 16-d "
           r"\(its features, dataset\.feature_dim\)$")  # fmt: skip
    with pytest.raises(PredictError, match=msg):
        p.encode_features(np.zeros((20, D - 1)), 1.0, name="f")
    c3d = Predictor(p.model, p.cfg, {"vocab": VOCAB, "recipe": {**p.recipe, "backbone": "c3d"}}, label="m")
    with pytest.raises(PredictError, match=r"^f: features are 15-d, the model of m takes 16-d \(c3d features, dataset\.feature_dim\)$"):
        c3d.encode_features(np.zeros((20, D - 1)), 1.0, name="f")
    bad = np.zeros((20, D))
    for v in (np.inf, 1e39):  # 1e39: finite in float64, inf as the model's float32
        bad[3, 2] = v
        with pytest.raises(PredictError, match=r"^f: non-finite features \(NaN/inf\)$"), np.errstate(over="ignore"):
            p.encode_features(bad, 1.0, name="f")
    for d in (0, -1.0, float("nan"), float("inf"), "3", None):
        with pytest.raises(PredictError, match=rf"^f: duration must be a positive number of seconds, got {re.escape(repr(d))}$"):
            p.encode_features(np.zeros((20, D)), d, name="f")
    assert p.encode_features(np.zeros((20, D)), 2).duration == 2.0
    with pytest.raises(PredictError, match=r"^v\.mp4: 101 bytes, over the limit predict\.max_file_bytes = 100$"):
        p.check_file_size(101, "v.mp4")
    p.check_file_size(100, "v.mp4")


def test_encode_query_ids_truncation_and_refusals(ckpt: Path, caplog) -> None:
    p = Predictor.from_checkpoint(ckpt, limits={"max_query_words": 6, "max_query_bytes": 40})
    assert p.encode_query("Person opens THE zebra") == [2, 3, 4, 1]
    with caplog.at_level(logging.WARNING, logger="fian.predict"):
        assert p.encode_query("person opens the door walks away") == [2, 3, 4, 5]
    assert ("query 'person opens the door walks away': 6 words; the model reads the first 4 "
            "(text.max_query_len, as in training): dropped 'walks away'") in caplog.text  # fmt: skip
    with pytest.raises(PredictError, match=r"^query must be a string, got int$"):
        p.encode_query(5)
    q = "a b c d e f g"
    with pytest.raises(PredictError, match=rf"^query {re.escape(repr(q))}: 7 words, over the limit predict\.max_query_words = 6$"):
        p.encode_query(q)
    q = "é" * 21  # 42 bytes in UTF-8, 21 characters
    with pytest.raises(PredictError, match=rf"^query {re.escape(repr(q))}: 42 bytes, over the limit predict\.max_query_bytes = 40$"):
        p.encode_query(q)
    assert p.encode_query("é" * 17 + "  door") == [1, 5]  # 17 x 2 + 6 = 40 bytes: at the limit, accepted
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fian.predict"):
        assert p.encode_query("person opens the door") == [2, 3, 4, 5]  # exactly max_query_len words: nothing said
        words = "person opens the door " + " ".join(["walks away"] * 20)  # 44 words: 40 dropped
    assert caplog.text == ""
    big = Predictor.from_checkpoint(ckpt, limits={"max_query_words": 100})
    with caplog.at_level(logging.WARNING, logger="fian.predict"):
        big.encode_query(words)
    dropped = repr(" ".join(["walks away"] * 20))  # 20 x 10 + 19 spaces + 2 quotes = 221 characters
    assert len(dropped) == 221
    assert f"; the model reads the first 4 (text.max_query_len, as in training): dropped {dropped[:40]}... (221 characters)" in caplog.text
    # no known word among 10: the first 8 shown, cut at 80 characters
    q = " ".join(f"okapi{k:05d}" for k in range(10))
    shown = repr(", ".join(f"okapi{k:05d}" for k in range(8)))  # 8 x 10 + 7 x 2 + 2 quotes = 96 characters
    with pytest.raises(PredictError, match=rf"^query {re.escape(short(q))}: none of its words "
                       rf"\({re.escape(shown[:80])}\.\.\. \(96 characters\)\) is in the model's vocabulary of 6 words$"):
        big.encode_query(q)
    # text.lowercase false: the query keeps its case ('Person' is not 'person')
    cased = Predictor(p.model, dataclasses.replace(p.cfg, text=dataclasses.replace(p.cfg.text, lowercase=False)),
                      {"vocab": VOCAB, "recipe": p.recipe})  # fmt: skip
    assert cased.encode_query("Person opens") == [1, 3]
    q = "zebra, giraffe! okapi"
    with pytest.raises(PredictError, match=rf"^query {re.escape(repr(q))}: none of its words \('zebra, giraffe, okapi'\) "
                       r"is in the model's vocabulary of 6 words$"):
        p.encode_query(q)
    with pytest.raises(PredictError, match=r"^query '\?!': none of its words \('no words'\) is in the model's vocabulary"):
        p.encode_query("?!")


def test_a_checkpoint_without_a_current_bundle_is_refused(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "old.pt", **{BUNDLE_KEY: None})
    with pytest.raises(PredictError, match=rf"^{re.escape(str(path))}: this checkpoint carries no predict bundle "
                       r"\(vocabulary \+ feature recipe\): it was written by an older fian; retrain it \(fian train\) "
                       r"with this version to predict from it$"):  # fmt: skip
        Predictor.from_checkpoint(path)
    bundle = make_bundle(_cfg(), VOCAB, {})
    path = _checkpoint(tmp_path / "v0.pt", **{BUNDLE_KEY: {**bundle, "version": BUNDLE_VERSION + 1}})
    with pytest.raises(PredictError, match=rf"^{re.escape(str(path))}: predict bundle version {BUNDLE_VERSION + 1}, "
                       rf"this fian reads version {BUNDLE_VERSION}$"):  # fmt: skip
        Predictor.from_checkpoint(path)


# ----------------------------------------------------------------------------------------------
# The feature recipe a checkpoint carries
# ----------------------------------------------------------------------------------------------


def _recipe_cfg(**extract):
    cfg = _cfg()
    ex = dataclasses.replace(cfg.extract, **{"fps": 12.5, "clip_len": 16, "stride_frames": 8, "layer": "fc6",
                                             "c3d_mean_rgb": (1.0, 2.0, 3.0), "c3d_bgr": False, "batch_size": 7,
                                             **extract})  # fmt: skip
    return dataclasses.replace(cfg, extract=ex, train=dataclasses.replace(cfg.train, seed=42))


def test_recipe_of_extracted_c3d_features_by_hand() -> None:
    cfg = _recipe_cfg(backbone="i3d")  # the split's backbone (c3d) wins over the config's
    store = {"decode_fps": 25.0, "weights_sha256": "ab12", "clip_len": 32, "frames_per_feature": 4}
    r = feature_recipe(cfg, {"feature_source": "extract:c3d:c3d.pickle", "backbone": "c3d", "random_weights": 1,
                             "feature_store_attrs": store})  # fmt: skip
    assert r == {
        "source": "extract:c3d:c3d.pickle", "num_steps": T, "shorter": "repeat", "feature_dim": D,
        "random_weights": True, "pca": None, "recomputable": True, "reason": "", "backbone": "c3d",
        "layer": "fc6", "weights": "c3d.pickle", "weights_sha256": "ab12", "seed": 42, "fps": 25.0,
        "clip_len": 32, "stride_frames": 4, "c3d_mean_rgb": [1.0, 2.0, 3.0], "c3d_bgr": False, "batch_size": 7,
        "resize": [128, 171], "short_side": None, "crop": 112,
        "normalization": "C3D: minus the Sports-1M mean [1.0, 2.0, 3.0] (RGB), RGB order",
    }  # fmt: skip
    assert type(r["fps"]) is float and type(r["clip_len"]) is int and type(r["stride_frames"]) is int
    # nothing in the store: the config's values; the config's backbone when the split names none
    r = feature_recipe(_recipe_cfg(c3d_bgr=True), {"feature_source": "extract:w.pth"})
    assert (r["backbone"], r["layer"], r["weights"], r["weights_sha256"], r["fps"], r["clip_len"], r["stride_frames"],
            r["random_weights"]) == ("c3d", "fc6", "w.pth", None, 12.5, 16, 8, False)  # fmt: skip
    assert r["normalization"].endswith("(RGB), BGR order") and r["c3d_bgr"] is True
    # NaN in the store: each video's own rate (None); None in the config: the same
    assert feature_recipe(cfg, {"feature_source": "extract:w", "backbone": "c3d",
                                "feature_store_attrs": {"decode_fps": float("nan")}})["fps"] is None  # fmt: skip
    assert feature_recipe(_recipe_cfg(), {"feature_source": "extract:w", "feature_store_attrs": {"decode_fps": None}})["fps"] is None


def test_recipe_of_extracted_i3d_features_by_hand() -> None:
    r = feature_recipe(_recipe_cfg(), {"feature_source": "extract:i3d:rgb_imagenet.pt", "backbone": "i3d"})
    assert (r["backbone"], r["layer"], r["weights"], r["resize"], r["short_side"], r["crop"], r["normalization"]) == (
        "i3d", None, "rgb_imagenet.pt", None, 256, 224, "I3D: RGB scaled to [-1, 1]")
    assert r["recomputable"] is True and "c3d_mean_rgb" in r and r["pca"] is None


def test_recipe_of_imported_features_gives_the_reason() -> None:
    cfg = _recipe_cfg()
    r = feature_recipe(cfg, {"feature_source": "i3d_npy:feats/", "backbone": "i3d", "random_weights": False})
    assert r == {"source": "i3d_npy:feats/", "num_steps": T, "shorter": "repeat", "feature_dim": D,
                 "random_weights": False, "pca": None, "recomputable": False, "backbone": "i3d",
                 "reason": "the released I3D features come from files whose extraction settings this project does not know"}
    assert feature_recipe(cfg, {"feature_source": "store:x.h5"})["backbone"] == ""
    # a source without a colon names no layout, even when it is a layout's name
    assert feature_recipe(cfg, {"feature_source": "i3d_npy"})["reason"] == (
        "the features come from i3d_npy, not from this project's extract stage")
    syn = "the features were generated (fian.data.synthetic): there is no video behind them"
    assert feature_recipe(cfg, {"feature_source": "fian.data.synthetic:tiny"})["reason"] == syn
    assert feature_recipe(cfg, {"feature_source": "tacos_c3d:x.h5", "synthetic": True})["reason"] == syn
    assert feature_recipe(cfg, {})["reason"] == "the features come from an unnamed source, not from this project's extract stage"
    anet = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, feature_dim=500))
    r = feature_recipe(anet, {"feature_source": "activitynet_c3d:/data/sub_activitynet_v1-3.c3d.hdf5"})
    assert r["pca"] == "C3D fc7 (4096-d) -> 500-d PCA of the ActivityNet release (matrix not published)"
    assert r["reason"].startswith("ActivityNet Captions' released C3D features (sub_activitynet_v1-3.c3d.hdf5) are fc7")


def test_not_recomputable_reason_names_the_file_and_width() -> None:
    tacos = not_recomputable_reason("tacos_c3d", "tacos_c3d:/x/tall_c3d_features.hdf5", 4096)
    assert tacos.startswith("TACoS' released C3D features (tall_c3d_features.hdf5) come from a C3D run")
    assert not_recomputable_reason("tacos_c3d", "tacos_c3d:/x/tall_c3d_features.hdf5", 500) == (
        "the 500-d features of /x/tall_c3d_features.hdf5 (layout tacos_c3d) were imported, not made by this "
        "project's extract stage: how they were computed is not recorded")
    assert not_recomputable_reason("tacos_c3d", "tacos_c3d:", 7) == (
        "the 7-d features of an unnamed file (layout tacos_c3d) were imported, not made by this project's extract "
        "stage: how they were computed is not recorded")
    assert not_recomputable_reason("i3d_hdf5", "i3d_hdf5:any.h5", 1024).startswith("the released I3D features come from a file ")
    # a file name holding a colon (a Windows drive, an odd folder): only the first colon ends the layout
    assert not_recomputable_reason("tacos_c3d", "tacos_c3d:C:/x:y/feats.h5", 5).startswith("the 5-d features of C:/x:y/feats.h5 ")
    assert not_recomputable_reason("x", "x.h5", 3) == (
        "the features come from x.h5, not from this project's extract stage")


# ----------------------------------------------------------------------------------------------
# fian.data.text: the GloVe reader, the OOV policies, coverage and near-duplicates
# ----------------------------------------------------------------------------------------------


def _glove(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding, errors="surrogateescape"))
    return path


def test_read_glove_default_dimension_is_300(tmp_path: Path) -> None:
    from fian.data.text import Vocab, read_glove, vocab_with_glove

    vec = [f"{k / 8:g}" for k in range(300)]
    f = _glove(tmp_path / "g.txt", ["door " + " ".join(vec), "zebra " + " ".join(vec)])
    hits = read_glove(f, Vocab(["door"]))
    assert hits.dim == 300 and list(hits.vectors) == [2] and hits.vectors[2][299] == 299 / 8 and hits.lines == 2
    vocab, hits, added = vocab_with_glove(Vocab(["door"]), [["zebra"]], f)
    assert added == ["zebra"] and hits.dim == 300 and sorted(hits.vectors) == [2, 3] and hits.lines == 2


def test_read_glove_empty_and_blank_lines(tmp_path: Path) -> None:
    from fian.data.text import TextError, Vocab, read_glove

    f = _glove(tmp_path / "empty.txt", [])
    with pytest.raises(TextError, match=rf"^{re.escape(str(f))}: empty GloVe file$"):
        read_glove(f, Vocab(["a"]), dim=2)
    # a blank line is skipped, not the end of the file
    hits = read_glove(_glove(tmp_path / "g.txt", ["a 1 2", "", "   ", "b 3 4"]), Vocab(["a", "b"]), dim=2)
    assert {i: v.tolist() for i, v in hits.vectors.items()} == {2: [1, 2], 3: [3, 4]} and hits.lines == 4


def test_read_glove_is_utf8_whatever_the_locale_and_survives_a_stray_byte(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    f = tmp_path / "g.txt"
    f.write_bytes("café 1 2\n".encode() + b"bad\xff 5 6\n" + "naïve 3 4\n".encode())  # \xff: not UTF-8
    code = ("import sys; from fian.data.text import Vocab, read_glove; "
            "h = read_glove(sys.argv[1], Vocab(['caf\\u00e9', 'na\\u00efve']), dim=2); "
            "print(sorted((i, v.tolist()) for i, v in h.vectors.items()), h.lines)")  # fmt: skip
    # an ASCII locale (no UTF-8 mode): open() without an encoding would read 'café' as 'caf??'
    import fian

    root = str(Path(fian.__file__).resolve().parents[1])  # the fian this process imported (mutmut: its copy)
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", code, str(f)], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(2, [1.0, 2.0]), (3, [3.0, 4.0])] 3"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("w 1 2 \t", r"vector of 'w' has a field that is not a number"),  # a tab is a field, not line end
        ("X", r"expected a word and 3 numbers, got 0 field\(s\) after the word \(wrong dimension\?\)"),
        ("w  1 2 3", None),  # the word is 'w ' (all before the last 3 fields): not 'w', nothing to read
        ("w 1 2\x0c5 3", r"vector of 'w' has a field that is not a number"),  # a form feed is no separator
        ("w 1 inf\x0c 3", r"vector of 'w': field 2 is 'inf\\x0c', not a finite float32"),  # the field as written
        (". w . 1 nan 3", r"vector of '\. w \.': field 2 is 'nan', not a finite float32"),  # a word with spaces (840B)
    ],
)
def test_read_glove_splits_on_single_spaces_only(tmp_path: Path, line: str, message: str | None) -> None:
    from fian.data.text import TextError, Vocab, read_glove

    f = _glove(tmp_path / "g.txt", ["v 7 8 9", line])
    if message is None:
        hits = read_glove(f, Vocab(["v", "w", "X"]), dim=3)
        assert {i: v.tolist() for i, v in hits.vectors.items()} == {2: [7, 8, 9]}
        return
    with pytest.raises(TextError, match=rf"^{re.escape(str(f))}:2: {message}$"):
        read_glove(f, Vocab(["v", "w", "X", ". w ."]), dim=3)


def test_read_glove_goes_on_after_a_repeat_and_a_special_and_reports_overflow(tmp_path: Path) -> None:
    import warnings

    from fian.data.text import TextError, Vocab, read_glove

    f = _glove(tmp_path / "g.txt", ["a 1 2", "a 3 4", "<unk> 5 6", "<pad> 0 0", "b 7 8"])
    hits = read_glove(f, Vocab(["a", "b"]), dim=2)
    assert {i: v.tolist() for i, v in hits.vectors.items()} == {2: [1, 2], 3: [7, 8]}  # the specials keep no vector
    assert hits.duplicates == [("a", 1, 2)] and hits.lines == 5
    f = _glove(tmp_path / "big.txt", ["a 1 1e39"])  # beyond float32: inf, said as an error, not a numpy warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TextError, match=rf"^{re.escape(str(f))}:1: vector of 'a': field 2 is '1e39', not a finite float32$"):
            read_glove(f, Vocab(["a"]), dim=2)


def test_encode_sentences_int64_and_case() -> None:
    from fian.data.text import Vocab, encode_sentences

    vocab = Vocab(["door", "Door"])  # ids 2, 3
    ids, lengths = encode_sentences(["Door opens", "DOOR"], vocab, 3, lowercase=False)
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    assert ids.tolist() == [[3, 1, 0], [1, 0, 0]] and lengths.tolist() == [2, 1]
    ids, _ = encode_sentences(["Door opens", "DOOR"], vocab, 3)
    assert ids.tolist() == [[2, 1, 0], [2, 0, 0]]


def test_filter_sentences_case_and_the_first_five_offenders() -> None:
    from fian.data.text import TextError, Vocab, filter_sentences, known_mask

    vocab = Vocab(["door", "Door"])
    known = known_mask(vocab, [])
    assert known.dtype == np.bool_ and known.tolist() == [False, False, True, True]
    keep, counts = filter_sentences(["DOOR", "zebra"], vocab, {2}, empty_sentence="drop", all_oov="drop")
    assert keep.tolist() == [True, False] and counts == {"empty_sentence": 0, "all_oov": 1}  # lowercased by default
    keep, _ = filter_sentences(["DOOR", "Door"], vocab, {2}, empty_sentence="drop", all_oov="drop", lowercase=False)
    assert keep.tolist() == [False, False]  # 'DOOR' is unknown, 'Door' (id 3) has no vector here
    bad = [f"zebra {k}" for k in range(6)]
    shown = "; ".join(f"row {k} ('zebra {k}')" for k in range(5))
    with pytest.raises(TextError, match=rf"^6 quer\(ies\) with all_oov and policy 'fail': {re.escape(shown)}$"):
        filter_sentences(bad, vocab, known, empty_sentence="fail", all_oov="fail")


def test_vocab_file_keeps_its_words_readable_and_build_drops_the_specials(tmp_path: Path) -> None:
    from fian.data.text import Vocab

    v = Vocab.build([["café", "<unk>", "<pad>"], ["café", "naïve"]])
    assert v.itos == ["<pad>", "<unk>", "café", "naïve"]
    v.save(tmp_path / "vocab.json")
    assert (tmp_path / "vocab.json").read_text(encoding="utf-8") == '["<pad>", "<unk>", "café", "naïve"]\n'
    assert Vocab.load(tmp_path / "vocab.json") == v


def test_oov_random_is_a_seeded_normal_of_the_found_vectors_std(tmp_path: Path) -> None:
    from fian.data.text import GloveHits, TextError, Vocab, build_embeddings

    vocab = Vocab(["a", "b", "c", "d"])
    hits = GloveHits(3, {2: np.array([1.0, 2.0, 6.0], np.float32), 3: np.array([0.0, -2.0, 5.0], np.float32)})
    vals = [1.0, 2.0, 6.0, 0.0, -2.0, 5.0]
    mean = sum(vals) / 6
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 6)  # 2.73...: the std of all found numbers
    want = np.random.default_rng(0).normal(0.0, std, size=(3, 3)).astype(np.float32)  # rows 1 (<unk>), 4, 5
    for emb in (build_embeddings(vocab, hits, "random"), build_embeddings(vocab, hits, "random", seed=0)):
        np.testing.assert_array_equal(emb[[1, 4, 5]], want)
        assert emb.dtype == np.float32 and not emb[0].any() and emb[2].tolist() == [1, 2, 6]
    # all found vectors equal (std 0), or none found: N(0, 0.1^2)
    same = GloveHits(3, {2: np.ones(3, np.float32), 3: np.ones(3, np.float32)})
    want = np.random.default_rng(5).normal(0.0, 0.1, size=(3, 3)).astype(np.float32)
    np.testing.assert_array_equal(build_embeddings(vocab, same, "random", seed=5)[[1, 4, 5]], want)
    want = np.random.default_rng(5).normal(0.0, 0.1, size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(build_embeddings(vocab, GloveHits(3), "random", seed=5)[1:], want)
    # unk: the mean of each dimension (not one number for all): (1 + 0) / 2, (2 - 2) / 2, (6 + 5) / 2
    assert build_embeddings(vocab, hits, "unk")[[1, 4, 5]].tolist() == [[0.5, 0.0, 5.5]] * 3
    # none found, unk: zeros
    assert not build_embeddings(vocab, GloveHits(3), "unk").any()
    with pytest.raises(TextError, match=r"^text\.oov must be unk, zero or random, got 'mean'$"):
        build_embeddings(vocab, hits, "mean")


def test_unseen_words_most_frequent_first() -> None:
    from fian.data.text import Vocab, unseen_words

    sentences = [["a", "zoo", "bee"], ["zoo", "cat", "a"], ["zoo", "cat", "ant"]]
    assert unseen_words(Vocab(["a"]), sentences) == ["zoo", "cat", "ant", "bee"]  # 3, 2, then 1 each by alphabet


def test_tokenize_reads_a_typographic_apostrophe_as_a_plain_one() -> None:
    from fian.data.text import tokenize

    assert tokenize("The person\u2019s door won\u2019t open") == ["the", "person", "'s", "door", "wo", "n't", "open"]


def test_vocab_is_never_equal_to_another_type_and_holds_non_empty_strings() -> None:
    from fian.data.text import TextError, Vocab

    v = Vocab(["a"])
    assert v != 5 and v != ["<pad>", "<unk>", "a"] and v == Vocab(["a"]) and v != Vocab(["b"])
    for bad in ("", 5):
        with pytest.raises(TextError, match=rf"^vocabulary entry 3 must be a non-empty string, got {re.escape(repr(bad))}$"):
            Vocab(["a", bad])


def test_coverage_by_hand_and_of_nothing() -> None:
    from fian.data.text import GloveHits, Vocab, coverage

    vocab = Vocab(["a", "b", "c"])  # ids 2, 3, 4
    hits = GloveHits(2, {2: np.zeros(2), 4: np.zeros(2)})
    got = coverage(vocab, hits, [["a", "zzz", "b"], ["yyy", "c", "a"]])
    # types: a, c of 3; tokens: a, c, a of 6 (zzz, yyy are <unk>: no vector, not a's)
    assert got == {"types": {"total": 3, "found": 2, "fraction": 2 / 3}, "tokens": {"total": 6, "found": 3, "fraction": 0.5}}
    assert coverage(vocab, hits, [["a"]], types_upto=3) == {
        "types": {"total": 1, "found": 1, "fraction": 1.0}, "tokens": {"total": 1, "found": 1, "fraction": 1.0}}
    assert coverage(Vocab([]), GloveHits(2), []) == {
        "types": {"total": 0, "found": 0, "fraction": 0.0}, "tokens": {"total": 0, "found": 0, "fraction": 0.0}}


def test_near_duplicates_threshold_size_zero_vectors_and_precision() -> None:
    import warnings

    from fian.data.text import GloveHits, Vocab, near_duplicates

    vocab = Vocab(["a", "b", "c", "d", "e"])
    # exactly two words, identical: one pair at similarity exactly 1 (kept at threshold 1.0: >=)
    two = GloveHits(2, {2: np.array([3.0, 4.0]), 3: np.array([3.0, 4.0])})
    assert near_duplicates(vocab, two, threshold=1.0) == [("a", "b", 1.0)]
    # the default threshold 0.99: cos = 0.995 is a pair, 0.985 is not; a zero vector is nobody's twin (no warning)
    c1, c2 = 0.995, 0.985
    hits = GloveHits(2, {2: np.array([1.0, 0.0], np.float32), 3: np.array([c1, math.sqrt(1 - c1 * c1)], np.float32),
                         4: np.array([c2, -math.sqrt(1 - c2 * c2)], np.float32), 5: np.zeros(2, np.float32)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = near_duplicates(vocab, hits)
    assert [p[:2] for p in got] == [("a", "b")]
    # in double precision: the float32 vectors' cosine as a plain float64 sum
    x, y = [float(v) for v in hits.vectors[2]], [float(v) for v in hits.vectors[3]]
    cos = sum(p * q for p, q in zip(x, y, strict=True)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))
    assert got[0][2] == pytest.approx(cos, rel=1e-13, abs=0)


def test_near_duplicates_compares_the_first_2000_words_only() -> None:
    from fian.data.text import GloveHits, Vocab, near_duplicates

    n = 2001
    vocab = Vocab([f"w{k}" for k in range(n)])
    eye = np.eye(n, dtype=np.float32)
    hits = GloveHits(n, {k + 2: eye[k] for k in range(n)})
    hits.vectors[n + 1] = eye[0]  # the 2001st word is the first's twin: beyond max_words
    assert near_duplicates(vocab, hits) == []
    assert near_duplicates(vocab, hits, max_words=n) == [("w0", f"w{n - 1}", 1.0)]
