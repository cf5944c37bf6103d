"""A tiny grounding set the model can learn on CPU in seconds, and a tiny config (train tests).

Each video holds two queries.  A query's words are its own tokens; its moment is marked in the
video features by a query-specific pattern (a direction of the feature space) added on the
moment's steps, on top of noise.  Finding the moment means matching words to the pattern.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from fian.config import Config, config_from_dict
from fian.data.dataset import GroundingSplit

T, D, WORDS = 32, 16, 4


def tiny_config(**train: object) -> Config:
    """A small FIAN (hidden 32, windows 4/8/16 over 32 steps) with fast training settings."""
    base = Config().to_dict()
    over = {
        "dataset": {"name": "tiny", "feature_dim": D},
        "text": {"word_dim": 16, "max_query_len": WORDS},
        "features": {"num_steps": T},
        "model": {
            "hidden": 32, "heads": 2, "self_attn_heads": 2, "ffn_dim": 64, "dropout": 0.0,
            "window_sizes": [4, 8, 16], "stride_ratio": 0.25,
        },
        "loss": {"alpha": 0.005},
        "train": {"lr": 3e-3, "batch_size": 8, "epochs": 2, "amp": "off", "sync_every": 2, **train},
        "eval": {"batch_size": 16},
        "tracking": {"enabled": False},
    }  # fmt: skip
    for k, v in over.items():
        base[k] = {**base[k], **v}
    return dataclasses.replace(config_from_dict(base), variant="fian")


def marked_split(n_videos: int = 8, seed: int = 0, same_moment: bool = False) -> GroundingSplit:
    """``2 * n_videos`` queries; ``same_moment``: every query has the moment [8, 16) steps."""
    rng = np.random.default_rng(seed)
    n_q = 2 * n_videos
    patterns = rng.normal(size=(n_q, D)).astype(np.float32)
    patterns /= np.linalg.norm(patterns, axis=1, keepdims=True)
    video = 0.3 * rng.normal(size=(n_videos, T, D)).astype(np.float32)
    video_index = np.repeat(np.arange(n_videos), 2)
    gt_steps = np.zeros((n_q, 2), dtype=np.float64)
    for q in range(n_q):
        if same_moment:
            s, length = 8, 8
        else:
            length = int(rng.choice([4, 8, 16]))
            s = int(rng.integers(0, T - length + 1))
        gt_steps[q] = (s, s + length)
        video[video_index[q], s : s + length] += 2.0 * patterns[q]
    words = 2 + np.arange(n_q * WORDS).reshape(n_q, WORDS)  # each query its own tokens (0 pad, 1 unk)
    word_len = np.full(n_q, WORDS)
    duration = np.full(n_q, 64.0)  # seconds: one step = 2 s
    gt = gt_steps * duration[:, None] / T
    records = pd.DataFrame(
        {
            "video_id": [f"vid{v}" for v in video_index],
            "sentence": [f"query {q}" for q in range(n_q)],
            "start": gt[:, 0],
            "end": gt[:, 1],
            "duration": duration,
            "source": "test",
        }
    )
    return GroundingSplit.from_arrays(
        video, video_index, words, word_len, gt, duration, records=records, num_steps=T,
        video_ids=[f"vid{v}" for v in range(n_videos)],
    )  # fmt: skip


VOCAB = 2 + 2 * 64 * WORDS  # enough token ids for marked_split(n_videos <= 64)


def plain_scores(predictions_path, metric_names) -> dict[str, float]:
    """Every metric of ``metric_names`` ("R@n,IoU=m", "mIoU") recomputed from a
    ``predictions_<split>.jsonl`` alone, written plainly from its documented fields (fian/evaluate.py):
    R@n,IoU=m hits when one of the first n moments of ``by_level[m]`` (else ``segments``) has IoU
    > m (``iou_rule`` "gt") or >= m ("ge") with ``gt``; mIoU is the IoU of ``segments[0]`` (0 when
    empty)."""
    import json
    import re

    def iou(a, b):
        inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
        union = max(a[1], b[1]) - min(a[0], b[0])
        return inter / union if union > 0 else 0.0

    with open(predictions_path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    out = {}
    for name in metric_names:
        if name == "mIoU":
            vals = [iou(r["segments"][0], r["gt"]) if r["segments"] else 0.0 for r in records]
        else:
            n, m = re.fullmatch(r"R@(\d+),IoU=([0-9.]+)", name).groups()
            vals = []
            for r in records:
                ranked = r.get("by_level", {}).get(m, r["segments"]) if "by_level" in r else r["segments"]
                ious = [iou(s, r["gt"]) for s in ranked[: int(n)]]
                hit = [x > float(m) if r["iou_rule"] == "gt" else x >= float(m) for x in ious]
                vals.append(any(hit))
        out[name] = sum(vals) / len(vals)
    return out


def plain(o: object) -> object:
    """``o`` with tuples as lists (for yaml.safe_dump of a config's dict)."""
    if isinstance(o, dict):
        return {k: plain(v) for k, v in o.items()}
    return [plain(v) for v in o] if isinstance(o, list | tuple) else o


def write_text_dir(text: Path) -> Path:
    """The text stage's outputs for the tiny vocabulary: vocab.json and 16-d embeddings.npy."""
    import json

    text.mkdir(parents=True, exist_ok=True)
    (text / "vocab.json").write_text(json.dumps(["<pad>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 2)]))
    emb = np.random.default_rng(0).normal(size=(VOCAB, 16)).astype(np.float32)
    emb[0] = 0
    np.save(text / "embeddings.npy", emb)
    return text


def write_tiny_data(root: Path, n_train: int, n_val: int = 4, n_test: int = 0) -> tuple[Path, Path]:
    """``root/data`` (train/val[/test].h5 of :func:`marked_split`, seeds 1/2/3) and ``root/text``
    (:func:`write_text_dir`): what the train and evaluate stages read."""
    data, text = root / "data", root / "text"
    for split, n, seed in (("train", n_train, 1), ("val", n_val, 2), ("test", n_test, 3)):
        if n:
            marked_split(n_videos=n, seed=seed).save(data / f"{split}.h5")
    write_text_dir(text)
    return data, text
