"""Parsers for the public annotation releases and their validation.

Every parser returns the same normalized table (one row per sentence-moment pair):

    video_id  str     the video key of the release
    duration  float   seconds (NaN when unknown; validation decides)
    start     float   seconds
    end       float   seconds
    sentence  str     the query, as released (only surrounding whitespace stripped)
    split     str     train / val / test
    source    str     where the row came from, for error messages: "file:line" or "file:key[i]"

Formats (``dataset.format``):

* ``activitynet`` -- 2D-TAN's ActivityNet Captions JSON ``{vid: {duration, timestamps: [[s, e], ...],
  sentences: [...]}}`` in seconds (``val.json`` = official ``val_1``, ``test.json`` = ``val_2``).
* ``tacos`` -- 2D-TAN's TACoS JSON ``{vid: {num_frames, fps, timestamps: [[f0, f1], ...], sentences}}``
  in FRAMES: seconds = frame / fps, duration = num_frames / fps (as 2D-TAN's TACoS loader).
* ``charades`` -- Charades-STA ``vid start end##sentence`` lines (seconds); the durations come from
  ``Charades_v1_{train,test}.csv`` (column ``length``), listed among the split's files.
* ``charades_cd`` -- Charades-CD's JSON (Yuan et al. 2021, yytzsy/grounding_changing_distribution)
  ``{vid: {video_duration, timestamps: [[s, e], ...], sentences: [...], ...}}`` in seconds; the
  other keys (``framestamps``, ``decode_fps``, ``encoded_sentences``, ``video_fps``) are not read.
  ActivityNet-CD's files are in the ``activitynet`` format.

:func:`validate` then applies :class:`fian.config.PolicyConfig` and counts every case.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fian.io import loads_json, read_utf8

log = logging.getLogger(__name__)

COLUMNS = ["video_id", "duration", "start", "end", "sentence", "split", "source"]
FORMATS = ("activitynet", "tacos", "charades", "charades_cd")
# validation cases, in the order they are checked (a row is counted under the first that applies)
CASES = ("empty_sentence", "missing_duration", "start_ge_end", "past_end")


class AnnotationError(ValueError):
    """A malformed or invalid annotation: the message names the file and the record."""


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"video_id": str, "duration": float, "start": float, "end": float, "sentence": str,
                      "split": str, "source": str})


def read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading BOM dropped); a bad byte is named with its offset."""
    return read_utf8(path, AnnotationError)


def _key_lines(text: str, key: str) -> list[int]:
    """Line numbers where ``"key":`` occurs (as json.dumps spells it; best effort, for messages)."""
    pattern = re.escape(json.dumps(key)) + r"\s*:"
    return [text.count("\n", 0, m.start()) + 1 for m in re.finditer(pattern, text)]


def _load_json(path: Path) -> dict[str, Any]:
    text = read_text(path)
    repeated: list[tuple[dict[str, Any], list[str]]] = []  # (object, keys it had twice)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs):  # json.loads would silently keep only the last value of a key
            keys = [k for k, _ in pairs]
            repeated.append((obj, sorted({k for k in keys if keys.count(k) > 1}, key=keys.index)))
        return obj

    data = loads_json(text, path, AnnotationError, object_pairs_hook=no_duplicates)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object {{video_id: record}}, got {type(data).__name__}")
    for obj, keys in repeated[::-1]:  # the top-level object comes last: report it first
        if obj is data:
            where = "; ".join(f"{k!r} at lines {', '.join(map(str, _key_lines(text, k)))}" for k in keys[:5])
            raise AnnotationError(f"{path}: video key(s) appear more than once: {where}{' ...' * (len(keys) > 5)}; "
                                  "JSON keeps only the last record of a key, the others' pairs would be lost: "
                                  "merge them into one record")
    for obj, keys in repeated:
        vid = next((v for v, rec in data.items() if rec is obj), None)
        where = f"{path}:{vid}" if vid is not None else str(path)
        raise AnnotationError(f"{where}: key(s) {keys} appear more than once in one record")
    return data


def _number(value: Any, where: str, what: str) -> float:
    """A finite number: JSON's ``NaN`` / ``Infinity`` literals (which Python's parser accepts) are
    not times, and would pass every comparison of :func:`validate` (NaN) or reach the predictions
    as ``[inf, inf]`` (an infinite duration)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AnnotationError(f"{where}: {what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: {what} is {value!r}, not a finite number: the release is corrupt "
                              "(fix or delete the record)")
    return float(value)


def _pairs(path: Path, vid: str, rec: Any, keys: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """The (timestamps, sentences) lists of one JSON record, checked for shape."""
    where = f"{path}:{vid}"
    if not isinstance(rec, dict):
        raise AnnotationError(f"{where}: record must be an object, got {type(rec).__name__}")
    missing = [k for k in ("timestamps", "sentences", *keys) if k not in rec]
    if missing:
        raise AnnotationError(f"{where}: missing key(s) {missing}")
    ts, ss = rec["timestamps"], rec["sentences"]
    if not isinstance(ts, list) or not isinstance(ss, list):
        raise AnnotationError(f"{where}: timestamps and sentences must be lists")
    if len(ts) != len(ss):
        raise AnnotationError(f"{where}: {len(ts)} timestamps but {len(ss)} sentences")
    for i, (t, s) in enumerate(zip(ts, ss, strict=True)):
        if not isinstance(t, list | tuple) or len(t) != 2:
            raise AnnotationError(f"{where}[{i}]: timestamp must be a pair [start, end], got {t!r}")
        if not isinstance(s, str):
            raise AnnotationError(f"{where}[{i}]: sentence must be a string, got {s!r}")
    return ts, ss


def read_activitynet(path: str | Path, split: str, duration_key: str = "duration") -> pd.DataFrame:
    """ActivityNet Captions JSON (seconds) -> normalized rows (unvalidated); Charades-CD's JSON is
    the same with ``duration_key="video_duration"``."""
    path = Path(path)
    rows = []
    for vid, rec in _load_json(path).items():
        ts, ss = _pairs(path, vid, rec, [duration_key])
        where = f"{path.name}:{vid}"
        dur = rec[duration_key]
        duration = math.nan if dur is None else _number(dur, where, "duration")
        for i, ((s, e), sent) in enumerate(zip(ts, ss, strict=True)):
            src = f"{where}[{i}]"
            rows.append(dict(video_id=vid, duration=duration, start=_number(s, src, "start"),
                             end=_number(e, src, "end"), sentence=sent.strip(), split=split, source=src))
    return _frame(rows)


def read_tacos(path: str | Path, split: str) -> pd.DataFrame:
    """TACoS JSON (frames) -> normalized rows in seconds (frame / fps; duration = num_frames / fps)."""
    path = Path(path)
    rows = []
    for vid, rec in _load_json(path).items():
        ts, ss = _pairs(path, vid, rec, ["num_frames", "fps"])
        where = f"{path.name}:{vid}"
        fps = _number(rec["fps"], where, "fps")
        if fps <= 0:
            raise AnnotationError(f"{where}: fps must be > 0, got {fps}")
        duration = _number(rec["num_frames"], where, "num_frames") / fps
        for i, ((f0, f1), sent) in enumerate(zip(ts, ss, strict=True)):
            src = f"{where}[{i}]"
            rows.append(dict(video_id=vid, duration=duration, start=_number(f0, src, "start frame") / fps,
                             end=_number(f1, src, "end frame") / fps, sentence=sent.strip(), split=split,
                             source=src))
    return _frame(rows)


def read_charades_durations(paths: Sequence[str | Path]) -> dict[str, float]:
    """``id`` -> ``length`` (seconds) from Charades_v1_{train,test}.csv."""
    out: dict[str, float] = {}
    for p in paths:
        p = Path(p)
        with io.StringIO(read_text(p), newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            if "id" not in cols or "length" not in cols:
                raise AnnotationError(f"{p}: need columns 'id' and 'length', found {cols}")
            for row in reader:
                where = f"{p}:{reader.line_num} (video {row['id']})"
                try:
                    length = float(row["length"])
                except (TypeError, ValueError):
                    raise AnnotationError(f"{where}: length {row['length']!r} is not a number") from None
                out[row["id"]] = _number(length, where, "length")
    return out


def read_charades(path: str | Path, split: str, durations: Mapping[str, float]) -> pd.DataFrame:
    """Charades-STA ``vid start end##sentence`` lines -> normalized rows (unknown duration = NaN)."""
    path = Path(path)
    rows = []
    with io.StringIO(read_text(path)) as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{path}:{n}"
            head, sep, sent = line.partition("##")
            fields = head.split()
            if not sep or len(fields) != 3:
                raise AnnotationError(f"{where}: expected 'video_id start end##sentence', got {line!r}")
            vid, s, e = fields
            try:
                start, end = float(s), float(e)
            except ValueError:
                raise AnnotationError(f"{where}: start/end {s!r} {e!r} are not numbers") from None
            start, end = _number(start, where, "start"), _number(end, where, "end")
            rows.append(dict(video_id=vid, duration=durations.get(vid, math.nan), start=start, end=end,
                             sentence=sent.strip(), split=split, source=f"{path.name}:{n}"))
    return _frame(rows)


def read_split(raw_dir: str | Path, fmt: str, split: str, files: Sequence[str]) -> pd.DataFrame:
    """Parse the annotation ``files`` (relative to ``raw_dir``) of one split, unvalidated."""
    raw_dir = Path(raw_dir)
    paths = [raw_dir / f for f in files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: annotation file of split {split!r} not found")
    if fmt == "charades":
        durations = read_charades_durations([p for p in paths if p.suffix == ".csv"])
        parts = [read_charades(p, split, durations) for p in paths if p.suffix != ".csv"]
    elif fmt == "activitynet":
        parts = [read_activitynet(p, split) for p in paths]
    elif fmt == "charades_cd":
        parts = [read_activitynet(p, split, "video_duration") for p in paths]
    elif fmt == "tacos":
        parts = [read_tacos(p, split) for p in paths]
    else:
        raise AnnotationError(f"unknown annotation format {fmt!r}; known: {list(FORMATS)}")
    if not parts:
        raise AnnotationError(f"split {split!r}: no annotation file among {list(files)}")
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _fail(case: str, df: pd.DataFrame, bad: pd.Series, detail: str) -> AnnotationError:
    rows = df[bad]
    examples = "; ".join(f"{r.source} (video {r.video_id}: {detail.format(r=r)})" for r in rows.head(5).itertuples())
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return AnnotationError(f"{len(rows)} pair(s) with {case} and policy 'fail': {examples}{more}")


def validate(df: pd.DataFrame, policy: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Apply the invalid-pair ``policy`` (a :class:`fian.config.PolicyConfig`) to one split.

    Cases, checked in this order (a pair counts under the first that applies):

    * ``empty_sentence``: nothing but whitespace (drop / fail);
    * ``missing_duration``: no duration, or duration <= 0 or infinite (drop / fail);
    * ``start_ge_end``: start >= end, a moment of no length (drop / fail);
    * ``past_end``: the moment leaves ``[0, duration]`` (clip / drop / fail).  ``clip`` cuts it to
      ``[max(start, 0), min(end, duration)]``; a moment lying wholly outside the video cannot be
      clipped to anything and is dropped, counted as ``past_end_unclippable``; under
      ``outside_video: keep`` it is kept unclipped instead (counted as ``outside_video_kept``) and
      the prepare stage drops it (:func:`outside_video`).

    Returns the kept rows (index reset) and the counts of each case.
    """
    counts: dict[str, Any] = {"pairs_raw": len(df), "policy": {}}
    times = df[["start", "end"]].to_numpy(dtype=float)
    bad_time = pd.Series(~np.isfinite(times).all(axis=1), index=df.index)
    if bad_time.any():  # the parsers refuse these; a table built elsewhere must not slip them through
        rows = df[bad_time]
        examples = "; ".join(f"{r.source} (video {r.video_id}: [{r.start}, {r.end}])" for r in rows.head(5).itertuples())
        raise AnnotationError(f"{len(rows)} pair(s) with a non-finite start or end: {examples}"
                              f"{' ...' if len(rows) > 5 else ''}")
    keep = pd.Series(True, index=df.index)
    checks = {
        "empty_sentence": (df["sentence"].str.strip() == "", "empty sentence"),
        "missing_duration": (~(df["duration"] > 0) | np.isinf(df["duration"]), "duration {r.duration}"),
        "start_ge_end": (df["start"] >= df["end"], "start {r.start} >= end {r.end}"),
        "past_end": ((df["end"] > df["duration"]) | (df["start"] < 0),
                     "[{r.start}, {r.end}] outside [0, {r.duration}]"),
    }
    for case in CASES:
        mask, detail = checks[case]
        bad = mask & keep
        action = getattr(policy, case)
        counts[case] = int(bad.sum())
        counts["policy"][case] = action
        if not bad.any():
            continue
        if action == "fail":
            raise _fail(case, df, bad, detail)
        if action == "drop":
            keep &= ~bad
        log.info("%s: %d pair(s) with %s -> %s", df["split"].iat[0], int(bad.sum()), case, action)
    out = df[keep].copy()
    counts["past_end_unclippable"] = 0
    counts["outside_video_kept"] = 0
    if policy.past_end == "clip":
        start, end = out["start"].clip(lower=0.0), out[["end", "duration"]].min(axis=1)
        empty = start >= end  # wholly outside [0, duration]: nothing is left to clip to
        out.loc[~empty, "start"], out.loc[~empty, "end"] = start[~empty], end[~empty]
        if getattr(policy, "outside_video", "drop") == "keep":  # kept unclipped; prepare drops it
            counts["outside_video_kept"] = int(empty.sum())
            if empty.any():
                rows = out[empty]
                log.warning("%s: %d pair(s) lie wholly outside their video, kept unclipped (policy outside_video: "
                            "keep; the prepare stage drops them): %s", df["split"].iat[0], len(rows),
                            "; ".join(f"{r.source} [{r.start}, {r.end}] of {r.duration}" for r in rows.head(5).itertuples()))
        else:
            counts["past_end_unclippable"] = int(empty.sum())
            out = out[~empty]
    out = out.reset_index(drop=True)
    counts["pairs_kept"] = len(out)
    counts["videos_kept"] = int(out["video_id"].nunique())
    return out, counts


def outside_video(df: pd.DataFrame) -> pd.Series:
    """Rows whose moment lies wholly outside ``[0, duration]`` (what ``outside_video: keep`` kept)."""
    return pd.Series(np.maximum(df["start"], 0.0) >= np.minimum(df["end"], df["duration"]), index=df.index)


def check_disjoint(tables: Mapping[str, pd.DataFrame], train: str = "train") -> None:
    """No video of the ``train`` split may occur in another split (a leak); others may share videos.

    (ActivityNet Captions' val_1 and val_2, our val and test, annotate the same 4,885 videos.)
    """
    if train not in tables:
        return
    first = tables[train].drop_duplicates("video_id").set_index("video_id")["source"]
    for split, df in tables.items():
        if split == train:
            continue
        shared = df[df["video_id"].isin(first.index)].drop_duplicates("video_id")
        if len(shared):
            r = shared.iloc[0]
            more = f" ({len(shared)} shared videos, e.g. {', '.join(shared['video_id'][:5])})" if len(shared) > 1 else ""
            raise AnnotationError(f"video {r.video_id!r} is in split {train!r} ({first[r.video_id]}) and in split "
                                  f"{split!r} ({r.source}){more}: train and {split} must not share videos (a leak)")


def load_annotations(raw_dir: str | Path, fmt: str, splits: Mapping[str, Sequence[str]],
                     policy: Any) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """Parse and validate every split: ``({split: table}, {split: counts})``.

    The parsed splits are checked with :func:`check_disjoint` before any validation.
    """
    if not splits:
        raise AnnotationError("dataset.splits is empty: name the annotation files of each split in params")
    tables, counts = {}, {}
    raw = {split: read_split(raw_dir, fmt, split, files) for split, files in splits.items()}
    check_disjoint(raw)
    for split, files in splits.items():
        tables[split], counts[split] = validate(raw[split], policy)
        if tables[split].empty:
            raise AnnotationError(f"split {split!r} ({', '.join(files)} in {raw_dir}): no pair left "
                                  f"({counts[split]['pairs_raw']} before validation)")
    return tables, counts
