"""The preloaded loader: one prepared split (features + tokens) held in tensors.

A split file (``data/processed/<dataset>/<split>.h5``, written by ``fian_pipeline.prepare``) holds

    video        [n_videos, T, D] float32   downsampled features (Section 4.3)
    video_mask   [n_videos, T]    bool      True on real steps (all True with features.shorter=repeat)
    video_ids    [n_videos]       str
    video_index  [Q]              int64     row of each query's video in ``video``
    words        [Q, n_q]         int64     token ids, 0-padded (fian.data.text.Vocab)
    word_len     [Q]              int64     real words per query (>= 1)
    gt           [Q, 2]           float32   ground-truth (start, end) in seconds
    duration     [Q]              float32   video duration in seconds
    records/<column>              one dataset per records column (video_id, sentence, start, ...)

and file attrs ``num_steps``, ``feature_dim``, ``format_version`` plus provenance (e.g.
``random_weights``).  :meth:`GroundingSplit.batches` gathers a batch with tensor indexing only
(no per-item Python loop), so it costs far less than a model step, and works on the device the
split lives on (:meth:`GroundingSplit.to`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fian.data.batch import Batch
from fian.io import atomic_path, loads_json, read_json

FORMAT_VERSION = 1
RECORD_COLUMNS = ("video_id", "sentence", "start", "end", "duration", "source")


class SplitError(ValueError):
    """A prepared split is unreadable or inconsistent: the message names the file and the key."""


def _t(x: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    a = np.asarray(x)
    if not a.flags.writeable:  # torch wants writable memory (pandas / h5py may hand out read-only views)
        a = a.copy()
    return torch.as_tensor(a, dtype=dtype)


def _query_fields(video_index: Any, words: Any, word_len: Any, gt: Any, duration: Any, n_videos: int,
                  where: str) -> tuple[torch.Tensor, ...]:
    """The per-query arrays as tensors ``(video_index, words, word_len, gt, duration)``, checked
    (shapes, index range, 1..n_q words, positive durations); :class:`SplitError` names ``where``."""
    vi = _t(video_index, torch.long)
    w = _t(words, torch.long)
    wl = _t(word_len, torch.long)
    g = _t(gt, torch.float32)
    d = _t(duration, torch.float32)
    Q = vi.shape[0]
    checks = [
        ("video_index", vi.ndim == 1),
        ("words", w.ndim == 2 and w.shape[0] == Q),
        ("word_len", tuple(wl.shape) == (Q,)),
        ("gt", tuple(g.shape) == (Q, 2)),
        ("duration", tuple(d.shape) == (Q,)),
    ]
    for key, ok in checks:
        if not ok:
            raise SplitError(f"{where}: {key}: inconsistent shape (Q={Q}, n_videos={n_videos})")
    if Q and (int(vi.min()) < 0 or int(vi.max()) >= n_videos):
        raise SplitError(f"{where}: video_index: values must be in [0, {n_videos})")
    if Q and (int(wl.min()) < 1 or int(wl.max()) > w.shape[1]):
        raise SplitError(f"{where}: word_len: every query needs 1..{w.shape[1]} words")
    if Q and not bool((d > 0).all()):
        raise SplitError(f"{where}: duration: row {int((d <= 0).nonzero()[0, 0])} is not positive")
    return vi, w, wl, g, d


def write_split(
    path: str | Path,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    n_videos: int,
    num_steps: int,
    feature_dim: int,
    video_ids: Sequence[str],
    video_index: Any,
    words: Any,
    word_len: Any,
    gt: Any,
    duration: Any,
    records: pd.DataFrame,
    attrs: Mapping[str, Any],
    rows: Any | None = None,
    where: str = "write_split",
) -> None:
    """Write a split file (module docstring) atomically, its videos streamed: ``blocks`` yields
    ``(video [k, T, D] float32, video_mask [k, T] bool)`` in row order, ``n_videos`` rows in all, so
    that no more than one block is ever held (the prepare stage at ActivityNet's size: 4 GB of
    train features).  Every check of :meth:`GroundingSplit.from_arrays` applies (a non-finite
    feature or a wrong count of rows raises :class:`SplitError` naming ``where``; nothing is left at
    ``path``)."""
    import h5py

    vi, w, wl, g, d = _query_fields(video_index, words, word_len, gt, duration, n_videos, where)
    Q = vi.shape[0]
    ids = [str(x) for x in video_ids]
    if len(ids) != n_videos:
        raise SplitError(f"{where}: video_ids: {len(ids)} ids for {n_videos} videos")
    if len(records) != Q:
        raise SplitError(f"{where}: records: {len(records)} rows for {Q} queries")
    r = torch.arange(Q, dtype=torch.long) if rows is None else _t(rows, torch.long)
    if tuple(r.shape) != (Q,):
        raise SplitError(f"{where}: rows: {tuple(r.shape)} for {Q} queries")
    T, D = int(num_steps), int(feature_dim)
    str_dt = h5py.string_dtype("utf-8")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["num_steps"] = T
        f.attrs["feature_dim"] = D
        f.attrs["attrs_json"] = json.dumps(dict(attrs), sort_keys=True, default=str)
        video = f.create_dataset("video", shape=(n_videos, T, D), dtype=np.float32)
        mask = f.create_dataset("video_mask", shape=(n_videos, T), dtype=bool)
        at = 0
        for v, m in blocks:
            v, m = np.asarray(v, dtype=np.float32), np.asarray(m, dtype=bool)
            k = v.shape[0] if v.ndim == 3 else -1
            if v.shape[1:] != (T, D) or m.shape != (k, T) or at + k > n_videos:
                raise SplitError(f"{where}: video rows {at}..: block of shape {v.shape} / mask {m.shape} does not fit "
                                 f"[{n_videos}, {T}, {D}]")  # fmt: skip
            if not np.isfinite(v).all():
                raise SplitError(f"{where}: video: non-finite features")
            video[at : at + k] = v
            mask[at : at + k] = m
            at += k
        if at != n_videos:
            raise SplitError(f"{where}: video: {at} rows written, {n_videos} expected")
        f.create_dataset("video_ids", data=np.array(ids, dtype=object), dtype=str_dt)
        for key, value in (("video_index", vi), ("words", w), ("word_len", wl), ("gt", g), ("duration", d), ("rows", r)):
            f.create_dataset(key, data=value.cpu().numpy())
        grp = f.create_group("records")
        for col in records.columns:
            values = records[col].to_numpy()
            if values.dtype.kind in "biuf":
                grp.create_dataset(str(col), data=values)
            else:
                grp.create_dataset(str(col), data=np.array([str(x) for x in values], dtype=object), dtype=str_dt)


class GroundingSplit:
    """One split: all videos and queries preloaded as tensors (see the module docstring).

    ``rows [Q]`` are the query rows of the split this one was cut from (``arange(Q)`` unless made
    by :meth:`subset`); ``Batch.index`` carries them and ``records`` is indexed by them, so
    ``split.records.loc[batch.index]`` finds a batch's records for any subset.
    """

    def __init__(
        self,
        *,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        video_index: torch.Tensor,
        words: torch.Tensor,
        word_len: torch.Tensor,
        gt: torch.Tensor,
        duration: torch.Tensor,
        records: pd.DataFrame,
        num_steps: int,
        rows: torch.Tensor,
        video_ids: Sequence[str],
        attrs: Mapping[str, Any] | None = None,
        word_len_cpu: torch.Tensor | None = None,
    ) -> None:
        self.video = video  # [n_videos, T, D] float32
        self.video_mask = video_mask  # [n_videos, T] bool
        self.video_index = video_index  # [Q] long
        self.words = words  # [Q, n_q] long
        self.word_len = word_len  # [Q] long
        self.gt = gt  # [Q, 2] float32, seconds
        self.duration = duration  # [Q] float32, seconds
        self.records = records
        self.num_steps = int(num_steps)
        self.rows = rows  # [Q] long
        self.video_ids = list(video_ids)
        self.attrs = dict(attrs or {})
        # host copies for batch planning: the longest query of a batch is found without a device sync
        self._word_len_cpu = word_len.detach().cpu() if word_len_cpu is None else word_len_cpu

    # ------------------------------------------------------------------------------------ build
    @classmethod
    def from_arrays(
        cls,
        video: Any,
        video_index: Any,
        words: Any,
        word_len: Any,
        gt: Any,
        duration: Any,
        *,
        records: pd.DataFrame | None = None,
        num_steps: int | None = None,
        video_mask: Any | None = None,
        video_ids: Sequence[str] | None = None,
        attrs: Mapping[str, Any] | None = None,
        rows: Any | None = None,
        where: str = "from_arrays",
    ) -> GroundingSplit:
        """Build and validate a split from numpy arrays or tensors (shapes in the module docstring)."""
        v = _t(video, torch.float32)
        if v.ndim != 3:
            raise SplitError(f"{where}: video must be [n_videos, T, D], got {tuple(v.shape)}")
        n_videos, T, _ = v.shape
        num_steps = T if num_steps is None else int(num_steps)
        if num_steps != T:
            raise SplitError(f"{where}: num_steps={num_steps} but video has T={T} steps")
        vm = torch.ones(n_videos, T, dtype=torch.bool) if video_mask is None else _t(video_mask, torch.bool)
        vi, w, wl, g, d = _query_fields(video_index, words, word_len, gt, duration, n_videos, where)
        if tuple(vm.shape) != (n_videos, T):
            raise SplitError(f"{where}: video_mask: inconsistent shape (Q={vi.shape[0]}, n_videos={n_videos}, T={T})")
        Q = vi.shape[0]
        if not torch.isfinite(v).all():
            raise SplitError(f"{where}: video: non-finite features")
        ids = [str(i) for i in range(n_videos)] if video_ids is None else [str(x) for x in video_ids]
        if len(ids) != n_videos:
            raise SplitError(f"{where}: video_ids: {len(ids)} ids for {n_videos} videos")
        if records is None:
            vi_np = vi.numpy()
            records = pd.DataFrame(
                {
                    "video_id": [ids[i] for i in vi_np],
                    "sentence": [""] * Q,
                    "start": g[:, 0].numpy().astype(np.float64),
                    "end": g[:, 1].numpy().astype(np.float64),
                    "duration": d.numpy().astype(np.float64),
                    "source": [""] * Q,
                }
            )
        if len(records) != Q:
            raise SplitError(f"{where}: records: {len(records)} rows for {Q} queries")
        r = torch.arange(Q, dtype=torch.long) if rows is None else _t(rows, torch.long)
        if tuple(r.shape) != (Q,):
            raise SplitError(f"{where}: rows: {tuple(r.shape)} for {Q} queries")
        records = records.reset_index(drop=True)
        records.index = pd.Index(r.numpy())
        return cls(
            video=v, video_mask=vm, video_index=vi, words=w, word_len=wl, gt=g, duration=d,
            records=records, num_steps=num_steps, rows=r, video_ids=ids, attrs=attrs,
        )  # fmt: skip

    # ------------------------------------------------------------------------------- file I/O
    def save(self, path: str | Path) -> None:
        """Write the split as one HDF5 file, atomically (:func:`write_split`)."""
        write_split(
            path, [(self.video.cpu().numpy(), self.video_mask.cpu().numpy())], n_videos=int(self.video.shape[0]),
            num_steps=self.num_steps, feature_dim=int(self.video.shape[2]), video_ids=self.video_ids,
            video_index=self.video_index, words=self.words, word_len=self.word_len, gt=self.gt,
            duration=self.duration, records=self.records, attrs=self.attrs, rows=self.rows, where=str(path),
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> GroundingSplit:
        """Read a split file into tensors (everything preloaded)."""
        import h5py

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prepared split not found (run the prepare stage)")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise SplitError(f"{path}: not a readable HDF5 split (truncated or corrupt?): {e}") from None
        with f:
            needed = (
                "video",
                "video_mask",
                "video_ids",
                "video_index",
                "words",
                "word_len",
                "gt",
                "duration",
            )
            for key in (*needed, "records"):
                if key not in f:
                    raise SplitError(f"{path}: key {key!r} missing (not a prepared split?)")
            try:
                arrays = {k: f[k][()] for k in needed}
                rows = f["rows"][()] if "rows" in f else None
                rec = {}
                for col in f["records"]:
                    values = f["records"][col][()]
                    rec[col] = (
                        [v.decode() if isinstance(v, bytes) else v for v in values]
                        if values.dtype.kind in "OS"
                        else values
                    )
                num_steps = int(f.attrs["num_steps"])
                attrs = loads_json(f.attrs.get("attrs_json", "{}"), f"{path}: attrs_json", SplitError)
            except (OSError, RuntimeError, KeyError) as e:
                raise SplitError(f"{path}: cannot read (corrupt?): {e}") from None
        ids = [v.decode() if isinstance(v, bytes) else str(v) for v in arrays.pop("video_ids")]
        records = pd.DataFrame(rec)
        order = [c for c in RECORD_COLUMNS if c in records.columns] + [
            c for c in records.columns if c not in RECORD_COLUMNS
        ]
        split = cls.from_arrays(
            arrays["video"], arrays["video_index"], arrays["words"], arrays["word_len"], arrays["gt"],
            arrays["duration"], records=records[order], num_steps=num_steps, video_mask=arrays["video_mask"],
            video_ids=ids, attrs=attrs, rows=rows, where=str(path),
        )  # fmt: skip
        return split

    # ---------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return int(self.video_index.shape[0])

    @property
    def device(self) -> torch.device:
        return self.video.device

    @property
    def feature_dim(self) -> int:
        return int(self.video.shape[2])

    @property
    def max_query_len(self) -> int:
        return int(self.words.shape[1])

    def to(self, device: torch.device | str) -> GroundingSplit:
        """The whole split on ``device`` (GPU-resident training: batches are gathered there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        move = dict(
            video=self.video, video_mask=self.video_mask, video_index=self.video_index, words=self.words,
            word_len=self.word_len, gt=self.gt, duration=self.duration, rows=self.rows,
        )  # fmt: skip
        return GroundingSplit(
            **{k: v.to(device) for k, v in move.items()}, records=self.records, num_steps=self.num_steps,
            video_ids=self.video_ids, attrs=self.attrs, word_len_cpu=self._word_len_cpu,
        )  # fmt: skip

    def subset(self, indices: Any) -> GroundingSplit:
        """The queries at ``indices`` (e.g. one DDP rank's shard); videos are shared, not copied."""
        idx = _t(indices, torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"subset: indices must be in [0, {len(self)})")
        dev = idx.to(self.device)
        return GroundingSplit(
            video=self.video, video_mask=self.video_mask, video_index=self.video_index[dev],
            words=self.words[dev], word_len=self.word_len[dev], gt=self.gt[dev], duration=self.duration[dev],
            records=self.records.iloc[idx.numpy()], num_steps=self.num_steps, rows=self.rows[dev],
            video_ids=self.video_ids, attrs=self.attrs, word_len_cpu=self._word_len_cpu[idx],
        )  # fmt: skip

    def with_videos_from(self, source: Any) -> GroundingSplit:
        """The same queries, each shown the video at row ``source[v]`` instead of its own row ``v``
        (``source [n_videos]``, a permutation of the rows; the video-shuffle check of Table 7).
        Everything about the query (words, ground truth, duration, records) is kept; the features
        and mask come from the other video."""
        src = _t(source, torch.long).reshape(-1)
        n = self.video.shape[0]
        if src.numel() != n or not torch.equal(torch.sort(src).values, torch.arange(n)):
            raise ValueError(f"with_videos_from: need a permutation of the {n} video rows, got {src.tolist()[:10]}")
        return GroundingSplit(
            video=self.video, video_mask=self.video_mask, video_index=src.to(self.device)[self.video_index],
            words=self.words, word_len=self.word_len, gt=self.gt, duration=self.duration, records=self.records,
            num_steps=self.num_steps, rows=self.rows, video_ids=self.video_ids, attrs=self.attrs,
            word_len_cpu=self._word_len_cpu,
        )  # fmt: skip

    # --------------------------------------------------------------------------------- batches
    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> Iterator[Batch]:
        """Yield :class:`Batch` es covering every query once (in order, or a seeded permutation).

        Shuffling draws one permutation on the CPU from ``generator`` (or a new one seeded with
        ``seed``).  Gathering is tensor indexing on the split's device; ``words`` are trimmed to the
        batch's longest query, computed from a host copy of the lengths (no device sync).
        ``device``: move each batch there (non_blocking) when the split lives elsewhere.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        Q = len(self)
        if shuffle:
            if generator is None:
                generator = torch.Generator()
                generator.manual_seed(0 if seed is None else int(seed))
            order = torch.randperm(Q, generator=generator)
        else:
            order = torch.arange(Q)
        stop = Q - Q % batch_size if drop_last else Q
        on_cpu = self.device.type == "cpu"
        # CPU: numpy's take copies whole [T, D] rows and beats torch's advanced indexing 1.3-2.4x
        # (bench/loader_speed.py); the tensor wraps the fresh array, no extra copy
        video_np = self.video.numpy() if on_cpu else None
        target = None if device is None else torch.device(device)
        for lo in range(0, stop, batch_size):
            idx_cpu = order[lo : lo + batch_size]  # [B]
            L = int(self._word_len_cpu[idx_cpu].max())
            idx = idx_cpu if on_cpu else idx_cpu.pin_memory().to(self.device, non_blocking=True)
            vi = self.video_index[idx]  # [B]
            words = self.words[idx, :L]  # [B, L]
            word_mask = torch.arange(L, device=self.device)[None, :] < self.word_len[idx][:, None]  # [B, L]
            if video_np is None:
                video = self.video[vi]  # [B, T, D]
            else:
                video = torch.from_numpy(np.take(video_np, vi.numpy(), axis=0))  # [B, T, D]
            batch = Batch(
                video=video,
                video_mask=self.video_mask[vi],  # [B, T]
                words=words,
                word_mask=word_mask,
                gt=self.gt[idx],  # [B, 2]
                duration=self.duration[idx],  # [B]
                index=self.rows[idx],  # [B]
            )
            if target is not None and target != self.device:
                batch = batch.to(target, non_blocking=True)
            yield batch


def load_embeddings(text_dir: str | Path) -> tuple[torch.Tensor, list[str]]:
    """``(embeddings [V, word_dim] float32, vocab tokens)`` from ``text/embeddings.npy`` + ``vocab.json``."""
    text_dir = Path(text_dir)
    emb_path, vocab_path = text_dir / "embeddings.npy", text_dir / "vocab.json"
    for p in (emb_path, vocab_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found (run the text stage)")
    vocab = read_json(vocab_path, SplitError)
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise SplitError(f"{vocab_path}: expected a JSON list of tokens")
    try:
        emb = np.load(emb_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SplitError(f"{emb_path}: not a readable .npy array: {e}") from None
    if emb.ndim != 2 or emb.shape[0] != len(vocab):
        raise SplitError(f"{emb_path}: shape {emb.shape} does not match {len(vocab)} tokens of {vocab_path}")
    if not np.isfinite(emb).all():
        raise SplitError(f"{emb_path}: non-finite values")
    return torch.from_numpy(emb.astype(np.float32)), vocab
