"""Stage ``prepare``: downsampled features + encoded queries, one ``<split>.h5`` per split.

    python -m fian_pipeline.prepare --params params/base.yaml params/datasets/<d>.yaml \
        --annotations data/interim/<d>/annotations --features data/interim/<d>/features.h5 \
        --text data/interim/<d>/text --out data/processed/<d>

For every split of ``dataset.splits`` (its ``<split>.parquet``; the folder is never listed): every
referenced video is downsampled to ``features.num_steps`` steps (fian.data.features.downsample),
every sentence tokenized and encoded with the vocabulary of the text stage (``text.max_query_len``
words kept), and the split written as a :class:`fian.data.dataset.GroundingSplit` file.  Queries
whose video has no features, or whose sentence is empty / all out-of-vocabulary, follow
``dataset.policy`` (missing_features, empty_sentence, all_oov).  All checks run before anything is
written; counts go to ``<out>/counts.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fian.io import read_json
from fian_pipeline.common import StageError, load, log, parser, run_stage

RECORD_COLUMNS = ("video_id", "sentence", "start", "end", "duration", "source")


def _drop_missing_features(df, store_ids: set[str], policy: str, table: Path, store_path: Path):
    """Queries whose video is not in the store: fail naming the first record, or drop and count."""
    bad = ~df["video_id"].isin(store_ids).to_numpy()
    n = int(bad.sum())
    if n and policy == "fail":
        row = df[bad].iloc[0]
        raise StageError(
            f"{table}: {n} quer(ies) whose video has no features in {store_path}; first: "
            f"{row.get('source', '?')} (video {row['video_id']!r}) (dataset.policy.missing_features: fail)"
        )
    if n:
        log.warning(
            "%s: dropped %d quer(ies) without features (dataset.policy.missing_features: drop)", table, n
        )
    return df[~bad].reset_index(drop=True), n


def _drop_outside_video(df, table: Path):
    """Moments wholly outside their video (kept by the annotations stage under ``dataset.policy.
    outside_video: keep``, e.g. 3 of Charades-CD's test_ood): no window can match them, so they are
    dropped here, loudly, and counted (``dropped_outside_video`` in counts.json)."""
    from fian.data.annotations import outside_video

    bad = outside_video(df).to_numpy()
    n = int(bad.sum())
    if n:
        rows = df[bad]
        log.warning("%s: DROPPED %d quer(ies) whose moment lies wholly outside the video (no window can match it): %s",
                    table, n, "; ".join(f"{r.get('source', '?')} [{r['start']}, {r['end']}] of {r['duration']} s"
                                        for _, r in rows.head(5).iterrows()))
    return df[~bad].reset_index(drop=True), n


def plan_split(
    table: Path, store_ids: set[str], vocab: Any, known: np.ndarray, cfg: Any, store_path: Path
) -> tuple[Any, tuple, dict]:
    """Read, check and encode one split: (kept rows, (words [Q, n_q], word_len [Q]), counts).

    ``all_oov``: no word of the sentence has a word vector (``known [V]`` bool: in the training
    vocabulary and not among coverage.json's ``oov_words``).
    """
    import pandas as pd

    from fian.data.text import TextError, encode_sentences, filter_sentences, tokenize

    try:
        df = pd.read_parquet(table)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise StageError(f"{table}: not a readable parquet table: {e}") from None
    missing_cols = set(RECORD_COLUMNS) - {"source"} - set(df.columns)
    if missing_cols:
        raise StageError(f"{table}: columns {sorted(missing_cols)} missing")
    pol, max_len, lower = cfg.dataset.policy, cfg.text.max_query_len, cfg.text.lowercase
    counts: dict[str, Any] = {"queries_in": len(df)}
    df, counts["dropped_outside_video"] = _drop_outside_video(df.reset_index(drop=True), table)
    df, counts["dropped_missing_features"] = _drop_missing_features(
        df.reset_index(drop=True), store_ids, pol.missing_features, table, store_path
    )
    sentences = [str(s) for s in df["sentence"]]
    sources = [str(s) for s in df["source"]] if "source" in df else None
    try:
        keep, dropped = filter_sentences(
            sentences, vocab, known, empty_sentence=pol.empty_sentence, all_oov=pol.all_oov,
            lowercase=lower, sources=sources,
        )  # fmt: skip
    except TextError as e:
        raise StageError(f"{table}: {e}") from None
    for case, n in dropped.items():
        counts[f"dropped_{case}"] = n
        if n:
            log.warning("%s: dropped %d quer(ies) with %s (dataset.policy.%s: drop)", table, n, case, case)
    df = df[keep].reset_index(drop=True)
    kept = [s for s, k in zip(sentences, keep, strict=True) if k]
    counts["truncated_to_max_query_len"] = sum(len(tokenize(s, lower)) > max_len for s in kept)
    counts["queries_out"] = len(df)
    counts["videos"] = int(df["video_id"].nunique())
    if not len(df):
        raise StageError(f"{table}: no queries left after the policies ({counts})")
    return df, encode_sentences(kept, vocab, max_len, lower), counts


# videos per block written to a split file: about this many bytes of downsampled features at once
BLOCK_BYTES = 64 << 20


def split_attrs(store: Any, cfg: Any) -> dict[str, Any]:
    """The provenance a split file carries (file attr ``attrs_json``)."""
    return {
        "dataset": cfg.dataset.name,
        "backbone": str(store.attrs.get("backbone", "")),
        "random_weights": bool(store.attrs.get("random_weights", False)),
        "synthetic": bool(store.attrs.get("synthetic", False)),
        "feature_source": str(store.attrs.get("source", "")),
        "max_query_len": cfg.text.max_query_len,
        # the store's file attrs (clip_len, frames_per_feature, weights_sha256, ...): the feature recipe
        # that the train stage puts into the checkpoint (fian.predict.feature_recipe)
        "feature_store_attrs": {k: v for k, v in store.attrs.items()},
    }


def write_prepared_split(df: Any, encoded: tuple[np.ndarray, np.ndarray], store: Any, cfg: Any, path: Path) -> None:
    """Write the split file of one planned split (fian.data.dataset.write_split), downsampling the
    referenced videos block by block (:data:`BLOCK_BYTES`): memory stays one block whatever the
    split's size (ActivityNet's train split holds 4 GB of downsampled features)."""
    from fian.data.dataset import write_split
    from fian.data.features import downsample

    T, D = cfg.features.num_steps, store.feature_dim
    words, word_len = encoded  # [Q, n_q] 0-padded, [Q]
    video_ids = sorted(df["video_id"].unique())
    row_of = {v: i for i, v in enumerate(video_ids)}
    per_block = max(1, BLOCK_BYTES // (T * D * 4))

    def blocks():
        for s in range(0, len(video_ids), per_block):
            ids = video_ids[s : s + per_block]
            video = np.empty((len(ids), T, D), dtype=np.float32)  # [k, T, D]
            video_mask = np.empty((len(ids), T), dtype=bool)  # [k, T]
            for i, vid in enumerate(ids):
                video[i], video_mask[i] = downsample(store.get(vid), T, cfg.features.shorter)
            yield video, video_mask

    records = df[[c for c in RECORD_COLUMNS if c in df.columns]].copy()
    if "source" not in records:
        records["source"] = ""
    write_split(
        path, blocks(), n_videos=len(video_ids), num_steps=T, feature_dim=D, video_ids=video_ids,
        video_index=df["video_id"].map(row_of).to_numpy(), words=words, word_len=word_len,
        gt=df[["start", "end"]].to_numpy(np.float32), duration=df["duration"].to_numpy(np.float32),
        records=records.reset_index(drop=True), attrs=split_attrs(store, cfg), where=str(path),
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("prepare", __doc__)
    p.add_argument("--annotations", type=Path, required=True, help="folder of <split>.parquet tables")
    p.add_argument("--features", type=Path, required=True, help="feature store (.h5)")
    p.add_argument("--text", type=Path, required=True, help="folder with vocab.json (text stage)")
    p.add_argument("--out", type=Path, required=True, help="folder for <split>.h5 and counts.json")
    args = p.parse_args(argv)
    cfg = load(args)
    from fian.data.features import FeatureStore
    from fian.data.text import Vocab, known_mask
    from fian.io import write_json

    # the split names come from params, never from listing the folder (temp files share it)
    tables = [args.annotations / f"{s}.parquet" for s in cfg.dataset.splits]
    if not tables:
        raise StageError("dataset.splits is empty: name the annotation files of each split in params")
    for t in tables:
        if not t.is_file():
            raise FileNotFoundError(f"{t}: annotation table of a split in dataset.splits not found "
                                    "(run the annotations stage)")
    vocab_path, coverage_path = args.text / "vocab.json", args.text / "coverage.json"
    for path in (vocab_path, coverage_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (run the text stage)")
    vocab = Vocab.load(vocab_path)
    try:
        oov_words = read_json(coverage_path, StageError)["oov_words"]
    except (KeyError, TypeError) as e:
        raise StageError(f"{coverage_path}: expected a JSON object with 'oov_words': {e}") from None
    known = known_mask(vocab, oov_words)  # [V] bool: words with a word vector
    with FeatureStore(args.features) as store:
        if store.feature_dim != cfg.dataset.feature_dim:
            raise StageError(
                f"{args.features}: feature_dim {store.feature_dim} != dataset.feature_dim {cfg.dataset.feature_dim}"
            )
        ids = set(store.ids())
        plans = {t.stem: plan_split(t, ids, vocab, known, cfg, args.features) for t in tables}  # checks first
        counts: dict[str, Any] = {
            "num_steps": cfg.features.num_steps,
            "policy": vars(cfg.dataset.policy),
            "splits": {},
        }
        for name, (df, tok, c) in plans.items():
            write_prepared_split(df, tok, store, cfg, args.out / f"{name}.h5")
            counts["splits"][name] = c
            log.info(
                "%s: %d queries, %d videos -> %s",
                name,
                c["queries_out"],
                c["videos"],
                args.out / f"{name}.h5",
            )
    write_json(args.out / "counts.json", counts)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
