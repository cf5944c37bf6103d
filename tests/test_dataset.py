"""GroundingSplit: round trip, batches (shapes, trimming, determinism, coverage), subset, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fian.data.batch import Batch
from fian.data.dataset import GroundingSplit, SplitError, load_embeddings

Q, N_VIDEOS, T, D, NQ = 23, 5, 8, 4, 6


def _split(seed: int = 0) -> GroundingSplit:
    rng = np.random.default_rng(seed)
    word_len = rng.integers(1, NQ + 1, size=Q)
    words = np.zeros((Q, NQ), dtype=np.int64)
    for q, n in enumerate(word_len):
        words[q, :n] = rng.integers(2, 50, size=n)
    start = rng.uniform(0, 10, size=Q)
    records = pd.DataFrame({
        "video_id": [f"vid{v}" for v in rng.integers(0, N_VIDEOS, size=Q)],
        "sentence": [f"sentence {q}" for q in range(Q)],
        "start": start, "end": start + 2, "duration": 20.0, "source": [f"f.json:k[{q}]" for q in range(Q)],
    })  # fmt: skip
    ids = [f"vid{v}" for v in range(N_VIDEOS)]
    return GroundingSplit.from_arrays(
        rng.normal(size=(N_VIDEOS, T, D)).astype(np.float32),
        records["video_id"].map({v: i for i, v in enumerate(ids)}).to_numpy(),
        words, word_len, records[["start", "end"]].to_numpy(), np.full(Q, 20.0),
        records=records, num_steps=T, video_ids=ids, attrs={"dataset": "test"},
    )  # fmt: skip


def test_round_trip(tmp_path: Path) -> None:
    s = _split()
    s.save(tmp_path / "train.h5")
    r = GroundingSplit.load(tmp_path / "train.h5")
    for key in ("video", "video_mask", "video_index", "words", "word_len", "gt", "duration", "rows"):
        assert torch.equal(getattr(s, key), getattr(r, key)), key
    pd.testing.assert_frame_equal(s.records, r.records)
    assert (r.num_steps, r.video_ids, r.attrs, len(r)) == (T, s.video_ids, {"dataset": "test"}, Q)
    assert [p.name for p in tmp_path.iterdir()] == ["train.h5"]


def test_batches_shapes_trimming_and_values() -> None:
    s = _split()
    batches = list(s.batches(5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    for b in batches:
        assert isinstance(b, Batch)
        B = len(b)
        L = int(s.word_len[b.index].max())
        assert b.video.shape == (B, T, D) and b.video.dtype == torch.float32
        assert b.video_mask.shape == (B, T) and b.video_mask.all()
        assert b.words.shape == (B, L) and b.word_mask.shape == (B, L)  # trimmed to the longest query
        assert torch.equal(b.word_mask.sum(1), s.word_len[b.index])
        assert torch.equal(b.words, s.words[b.index, :L]) and not b.words[~b.word_mask].any()
        assert torch.equal(b.video, s.video[s.video_index[b.index]])
        assert torch.equal(b.gt, s.gt[b.index]) and torch.equal(b.duration, s.duration[b.index])
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(Q))


def test_shuffle_every_query_once_and_deterministic() -> None:
    s = _split()

    def epoch(**kw) -> torch.Tensor:
        return torch.cat([b.index for b in s.batches(4, shuffle=True, **kw)])

    a = epoch(generator=torch.Generator().manual_seed(3))
    assert sorted(a.tolist()) == list(range(Q)) and not torch.equal(a, torch.arange(Q))
    assert torch.equal(a, epoch(generator=torch.Generator().manual_seed(3)))
    assert torch.equal(epoch(seed=5), epoch(seed=5)) and not torch.equal(epoch(seed=5), epoch(seed=6))
    g = torch.Generator().manual_seed(3)
    e1, e2 = epoch(generator=g), epoch(generator=g)  # one generator across epochs: new order each epoch
    assert not torch.equal(e1, e2) and sorted(e2.tolist()) == list(range(Q))
    dropped = [len(b) for b in s.batches(4, shuffle=True, seed=1, drop_last=True)]
    assert dropped == [4] * (Q // 4)
    with pytest.raises(ValueError, match="batch_size"):
        next(s.batches(0))


def test_subset_keeps_rows_and_records() -> None:
    s = _split()
    sub = s.subset([7, 2, 19])
    assert len(sub) == 3 and sub.video is s.video  # videos shared, not copied
    (b,) = list(sub.batches(8))
    assert b.index.tolist() == [7, 2, 19]
    assert sub.records.loc[b.index.numpy(), "sentence"].tolist() == [
        "sentence 7",
        "sentence 2",
        "sentence 19",
    ]
    assert torch.equal(b.gt, s.gt[[7, 2, 19]])
    with pytest.raises(IndexError):
        s.subset([Q])


def test_subset_round_trip_and_to(tmp_path: Path) -> None:
    sub = _split().subset([3, 1])
    sub.save(tmp_path / "sub.h5")
    r = GroundingSplit.load(tmp_path / "sub.h5")
    assert r.rows.tolist() == [3, 1] and r.records.index.tolist() == [3, 1]
    assert r.to("cpu") is r
    moved = r.to("meta")
    assert moved.video.device.type == "meta" and moved.records is r.records


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"video_index": [0] * (Q - 1) + [N_VIDEOS]}, "video_index"),
        ({"word_len": [0] * Q}, "word_len"),
        ({"gt": np.zeros((Q, 3))}, "gt"),
        ({"duration": np.zeros(Q)}, "duration"),
        ({"video": np.full((N_VIDEOS, T, D), np.nan)}, "non-finite"),
    ],
)
def test_from_arrays_rejects_inconsistent_input(change: dict, match: str) -> None:
    s = _split()
    kw = dict(
        video=s.video,
        video_index=s.video_index,
        words=s.words,
        word_len=s.word_len,
        gt=s.gt,
        duration=s.duration,
    )
    kw.update(change)
    with pytest.raises(SplitError, match=match):
        GroundingSplit.from_arrays(**kw)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "val.h5"
    with pytest.raises(FileNotFoundError, match="val.h5"):
        GroundingSplit.load(path)
    _split().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SplitError, match=r"val.h5: not a readable HDF5 split"):
        GroundingSplit.load(path)
    import h5py

    with h5py.File(path, "w") as f:
        f["video"] = np.zeros((1, 2, 3))
    with pytest.raises(SplitError, match=r"val.h5: key 'video_mask' missing"):
        GroundingSplit.load(path)


def test_load_embeddings(tmp_path: Path) -> None:
    vocab = ["<pad>", "<unk>", "man", "door"]
    emb = np.random.default_rng(0).normal(size=(4, 300)).astype(np.float32)
    emb[0] = 0
    np.save(tmp_path / "embeddings.npy", emb)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    e, v = load_embeddings(tmp_path)
    assert v == vocab and e.dtype == torch.float32 and torch.equal(e, torch.from_numpy(emb))
    np.save(tmp_path / "embeddings.npy", emb[:3])
    with pytest.raises(SplitError, match=r"embeddings.npy: shape \(3, 300\) does not match 4 tokens"):
        load_embeddings(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(SplitError, match=r"vocab.json: line 1 column \d+: malformed JSON"):
        load_embeddings(tmp_path)
    with pytest.raises(FileNotFoundError, match="embeddings.npy"):
        load_embeddings(tmp_path / "nothing")


def _write_blocks(s: GroundingSplit, path: Path, blocks: list) -> None:
    from fian.data.dataset import write_split

    write_split(path, blocks, n_videos=N_VIDEOS, num_steps=T, feature_dim=D, video_ids=s.video_ids,
                video_index=s.video_index, words=s.words, word_len=s.word_len, gt=s.gt, duration=s.duration,
                records=s.records, attrs=s.attrs, where=str(path))  # fmt: skip


def test_write_split_streams_blocks_and_refuses_bad_ones(tmp_path: Path) -> None:
    """Videos written block by block (the prepare stage) give the file save() writes in one go; a
    block with NaN, too few or too many rows, or a wrong shape raises naming the file, leaving nothing."""
    s = _split()
    v, m = s.video.numpy(), s.video_mask.numpy()
    _write_blocks(s, tmp_path / "blocks.h5", [(v[:2], m[:2]), (v[2:3], m[2:3]), (v[3:], m[3:])])
    r = GroundingSplit.load(tmp_path / "blocks.h5")
    for key in ("video", "video_mask", "video_index", "words", "word_len", "gt", "duration", "rows"):
        assert torch.equal(getattr(s, key), getattr(r, key)), key
    pd.testing.assert_frame_equal(s.records, r.records)
    assert (r.video_ids, r.attrs) == (s.video_ids, s.attrs)
    bad = v.copy()
    bad[4, 1, 2] = np.nan
    cases = [
        ([(v[:2], m[:2]), (bad[2:], m[2:])], "non-finite"),
        ([(v[:4], m[:4])], "4 rows written, 5 expected"),
        ([(v, m), (v[:1], m[:1])], "does not fit"),
        ([(v[:, :, :2], m)], "does not fit"),
        ([(v, m[:, :3])], "does not fit"),
    ]
    for blocks, match in cases:
        with pytest.raises(SplitError, match=match):
            _write_blocks(s, tmp_path / "bad.h5", blocks)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.h5"], match
