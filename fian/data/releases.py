"""Tiny copies of the three public releases, written from a generated dataset (the rehearsal).

:func:`write_release` takes a :class:`fian.data.synthetic.SyntheticDataset` (videos, events,
queries, feature rows) and writes it the way the public release of one benchmark is laid out, so
that the real parsers (:mod:`fian.data.annotations`) and importers (:mod:`fian.data.features`)
read it unchanged: same file names (``dataset.splits``), video ids, units and quirks.

=================  ===========================================  ====================================
format / layout    annotation files                             feature files
=================  ===========================================  ====================================
activitynet /      ``<split>.json`` ``{v_XXXXXXXXXXX: {duration,  ``sub_activitynet_v1-3.c3d.hdf5``:
activitynet_c3d    timestamps (s), sentences}}``; sentences     group ``<vid>`` with
                   after the first start with a space            ``c3d_features`` [n, D]
charades /         ``charades_sta_<split>.txt`` lines           a folder of ``<vid>.npy`` [n, D]
i3d_npy            ``VID5C s.s e.e##sentence.``; durations in
                   ``Charades_v1_<split>.csv`` (all 11 columns,
                   ``length``)
tacos /            ``<split>.json`` ``{sNN-dNN.avi: {num_frames,  ``tall_c3d_features.hdf5``:
tacos_c3d          fps, timestamps (FRAMES), sentences}}``      ``<vid>`` (with ``.avi``) -> [n, D]
=================  ===========================================  ====================================

Quirks of the releases that the params' policies handle (docs/DATASETS.md), one each in the
training split: a moment with start >= end (``start_ge_end: drop``, as the 4 reversed pairs of
ActivityNet and Charades-STA train) and a moment ending past the video (``past_end: clip``).
They are extra records (copies of a real query), so every generated query keeps its true moment.

Generated data, not real videos: the annotations folder gets ``<name>_meta.json`` saying so,
HDF5 feature files carry the attr ``synthetic = True`` (the feature store inherits it).
Every file is written atomically.  Deterministic from the dataset's seed.

:func:`write_full_release` and :func:`write_glove_like` (issue 21, bench/scale.py) write the three
releases at their REAL size instead: the real annotation files, random features in the released
files' layout, dtype, rate and chunking, and a GloVe-840B-shaped text file (section below).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fian.data.synthetic import SyntheticDataset, SyntheticVideo
from fian.io import atomic_path, write_json, write_text

# dataset.format -> the feature layout of its public release
RELEASE_LAYOUT = {"activitynet": "activitynet_c3d", "charades": "i3d_npy", "tacos": "tacos_c3d"}
ACTIVITYNET_FEATURES = "sub_activitynet_v1-3.c3d.hdf5"
TACOS_FEATURES = "tall_c3d_features.hdf5"
TACOS_FPS = 29.4  # every TACoS video of the 2D-TAN release has fps 29.4
CHARADES_COLUMNS = ("id", "subject", "scene", "quality", "relevance", "verified", "script", "objects",
                    "descriptions", "actions", "length")  # fmt: skip
_SCENES = ("Kitchen", "Bedroom", "Living room", "Bathroom", "Stairs", "Hallway", "Pantry")
_ID_CHARS = {
    "activitynet": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-",  # YouTube ids
    "charades": "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
}


class ReleaseSpecError(ValueError):
    """The params ask for a release this writer cannot produce (the message names the key)."""


def release_ids(ds: SyntheticDataset, fmt: str) -> dict[str, str]:
    """Generated id -> an id shaped like the release's (``v_`` + 11 YouTube chars, 5 Charades
    chars, ``sNN-dNN.avi``); unique over all splits, deterministic from the seed."""
    out: dict[str, str] = {}
    used: set[str] = set()
    k = 0
    for s_idx, split in enumerate(sorted(ds.splits)):
        for i, v in enumerate(ds.splits[split]):
            rng = np.random.default_rng([ds.spec.seed, 101, s_idx, i])
            while True:
                if fmt == "tacos":
                    new = f"s{13 + k // 40:02d}-d{21 + k % 40:02d}.avi"
                    k += 1
                else:
                    chars = _ID_CHARS[fmt]
                    n = 11 if fmt == "activitynet" else 5
                    body = "".join(chars[int(j)] for j in rng.integers(len(chars), size=n))
                    new = f"v_{body}" if fmt == "activitynet" else body
                if new not in used:
                    break
            used.add(new)
            out[v.video_id] = new
    return out


def _sentence(text: str, fmt: str) -> str:
    """The release's spelling: ActivityNet 'A man ... .', Charades 'a man ... .', TACoS 'A man ...'."""
    if fmt == "charades":
        return text + "."
    text = text[:1].upper() + text[1:]
    return text + "." if fmt == "activitynet" else text


def _pairs(video: SyntheticVideo, fmt: str, quirks: bool) -> list[tuple[float, float, str]]:
    """(start s, end s, sentence) of one video; with ``quirks`` two extra records (see module doc)."""
    rows = [(q.start, q.end, _sentence(q.sentence, fmt)) for q in video.queries]
    if quirks and rows:
        s, e, text = rows[0]
        rows.append((e, s, text))  # start >= end: a reversed moment, as in the releases
        s, e, text = rows[-2]
        rows.append((s, video.duration + 2.0, text))  # ends past the video end
    return rows


def _split_files(splits: Mapping[str, Sequence[str]], split: str, fmt: str) -> tuple[str, str | None]:
    """The annotation file (and for Charades the duration CSV) that params name for a split."""
    files = list(splits.get(split, ()))
    if fmt == "charades":
        txt = [f for f in files if f.endswith(".txt")]
        csvs = [f for f in files if f.endswith(".csv")]
        if len(txt) != 1 or len(csvs) != 1:
            raise ReleaseSpecError(
                f"dataset.splits.{split}: a Charades-STA split needs one .txt and one .csv file, got {files}"
            )
        return txt[0], csvs[0]
    if len(files) != 1 or not files[0].endswith(".json"):
        raise ReleaseSpecError(f"dataset.splits.{split}: expected one <name>.json file, got {files}")
    return files[0], None


def _charades_csv(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CHARADES_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_release(
    ds: SyntheticDataset,
    annotations_dir: str | Path,
    features_dir: str | Path,
    *,
    fmt: str,
    layout: str,
    splits: Mapping[str, Sequence[str]],
    name: str,
) -> dict[str, Any]:
    """Write ``ds`` as a tiny copy of the public release of ``fmt`` (see the module doc).

    ``splits``: ``dataset.splits`` of the params (the file names to write, per split; every split
    of the generated dataset must be named).  Returns summary counts (records per split include
    the two quirk records of the training split).
    """
    if fmt not in RELEASE_LAYOUT:
        raise ReleaseSpecError(f"dataset.format: no release writer for {fmt!r}; known: {sorted(RELEASE_LAYOUT)}")
    if layout != RELEASE_LAYOUT[fmt]:
        raise ReleaseSpecError(
            f"dataset.feature_layout: the {fmt} release is laid out as {RELEASE_LAYOUT[fmt]!r}, got {layout!r}"
        )
    missing = sorted(set(ds.splits) - set(splits))
    if missing:
        raise ReleaseSpecError(f"dataset.splits: no file named for the generated split(s) {missing}")
    annotations_dir, features_dir = Path(annotations_dir), Path(features_dir)
    ids = release_ids(ds, fmt)
    summary: dict[str, Any] = {"synthetic": True, "release": fmt, "layout": layout, "seed": ds.spec.seed,
                               "feature_dim": ds.feature_dim, "splits": {}}  # fmt: skip
    meta: dict[str, Any] = {
        "generated": "fian.data.releases: synthetic videos in the layout of a public release; not real data",
        "format": fmt,
        "layout": layout,
        "videos": {},
    }
    for split, videos in sorted(ds.splits.items()):
        ann_file, csv_file = _split_files(splits, split, fmt)
        records = 0
        content: dict[str, Any] = {}
        lines: list[str] = []
        csv_rows: list[dict[str, str]] = []
        for v_idx, v in enumerate(videos):
            vid = ids[v.video_id]
            pairs = _pairs(v, fmt, quirks=(split == "train" and v_idx == 0))
            records += len(pairs)
            meta["videos"][vid] = {"split": split, "generated_id": v.video_id,
                                   "queries": [q.kind for q in v.queries]}  # fmt: skip
            if fmt == "activitynet":
                content[vid] = {
                    "duration": round(v.duration, 2),
                    "timestamps": [[round(s, 2), round(e, 2)] for s, e, _ in pairs],
                    "sentences": [t if i == 0 else " " + t for i, (_, _, t) in enumerate(pairs)],
                }
            elif fmt == "tacos":
                content[vid] = {
                    "timestamps": [[int(round(s * TACOS_FPS)), int(round(e * TACOS_FPS))] for s, e, _ in pairs],
                    "sentences": [t for _, _, t in pairs],
                    "fps": TACOS_FPS,
                    "num_frames": int(round(v.duration * TACOS_FPS)),
                }
            else:  # charades
                lines += [f"{vid} {s:.1f} {e:.1f}##{t}" for s, e, t in pairs]
                first = pairs[0][2] if pairs else ""
                csv_rows.append({
                    "id": vid, "subject": f"S{v_idx:03d}", "scene": _SCENES[v_idx % len(_SCENES)],
                    "quality": "6", "relevance": "7", "verified": "Yes",
                    "script": f"{first[:1].upper()}{first[1:]} Then, the video goes on.",  # a quoted comma
                    "objects": "box;cup;door", "descriptions": "", "actions": "c092 0.00 4.20;c147 1.10 6.00",
                    "length": f"{v.duration:.2f}",
                })  # fmt: skip
        if fmt == "charades":
            write_text(annotations_dir / ann_file, "\n".join(lines) + "\n")
            assert csv_file is not None
            write_text(annotations_dir / csv_file, _charades_csv(csv_rows))
        else:
            write_text(annotations_dir / ann_file, json.dumps(content) + "\n")
        summary["splits"][split] = {"videos": len(videos), "records": records}
    write_json(annotations_dir / f"{name}_meta.json", meta)
    _write_features(ds, ids, features_dir, layout)
    return summary


def _write_features(ds: SyntheticDataset, ids: Mapping[str, str], features_dir: Path, layout: str) -> None:
    import h5py

    videos = [v for split in sorted(ds.splits) for v in ds.splits[split]]
    if layout == "i3d_npy":
        for v in videos:
            with atomic_path(features_dir / f"{ids[v.video_id]}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, v.features, allow_pickle=False)
        return
    file = ACTIVITYNET_FEATURES if layout == "activitynet_c3d" else TACOS_FEATURES
    with atomic_path(features_dir / file) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["synthetic"] = True
        f.attrs["source"] = "fian.data.releases (generated; not real video features)"
        for v in videos:
            if layout == "activitynet_c3d":
                f.create_group(ids[v.video_id]).create_dataset("c3d_features", data=v.features)
            else:
                f.create_dataset(ids[v.video_id], data=v.features)


# --------------------------------------------------------------------------------------------
# Full-size releases (issue 21): the real annotation files, synthetic features of the real shapes
# --------------------------------------------------------------------------------------------
#
# The annotation files are the real ones (copied, or at ``scale < 1`` cut to the first videos of
# each file); the feature files are random values laid out as the released files are:
#
# activitynet  sub_activitynet_v1-3.c3d.hdf5: one group per video id, dataset ``c3d_features``
#              [n, 500] float64 (the PCA output; public readers cast it with ``.astype(float32)``),
#              contiguous (h5py's default, no filter); one row per 8 frames (16-frame C3D clips,
#              stride 8: activity-net.org challenge 2016), at 29.97 fps (the annotations carry no
#              frame rate; YouTube's usual rate) -> n = floor(duration * 29.97 / 8).  The real
#              file also holds ~5k ActivityNet v1.3 videos that no caption uses: not written (the
#              import never reads them; they add ~9 GB to the download only).
# tacos        tall_c3d_features.hdf5: one dataset per id (``sNN-dNN.avi``) [n, 4096] float32,
#              gzip (h5py's automatic chunks), as 2D-TAN's data/TACoS/merge_npys_to_hdf5.py writes
#              it: 64-frame windows every 64 // 5 = 12 frames -> n = (num_frames - 64) // 12 + 1.
# charades     one ``<vid>.npy`` [n, 1024] float32 per video (LGI's I3D release): one row per 8
#              frames at 24 fps (the Charades frames I3D was run on) -> n = floor(length * 3).
#
# GloVe 840B: 2,196,017 lines ``word v1 ... v300`` (values with 5 significant digits, as 840B
# prints them), the annotation words at spread-out lines, filler words elsewhere, one word with
# spaces (840B's ``. . .``).

FULL_FEATURES: dict[str, dict[str, Any]] = {
    "activitynet": {"file": ACTIVITYNET_FEATURES, "dim": 500, "dtype": "<f8", "compression": None},
    "tacos": {"file": TACOS_FEATURES, "dim": 4096, "dtype": "<f4", "compression": "gzip"},
    "charades": {"file": None, "dim": 1024, "dtype": "<f4", "compression": None},
}
ACTIVITYNET_FPS = 29.97  # frames per second assumed for ActivityNet's YouTube videos
ACTIVITYNET_STRIDE = 8  # frames per C3D feature row (challenge 2016 release)
TACOS_WINDOW, TACOS_STRIDE = 64, 64 // 5  # 2D-TAN merge_npys_to_hdf5.py(sampling_rate=64)
CHARADES_ROWS_PER_SECOND = 24 / 8  # I3D every 8 frames of 24 fps frames
GLOVE_840B_LINES = 2_196_017
GLOVE_840B_BYTES = 5_646_236_541  # size of glove.840B.300d.txt (for the report; not enforced)
_POOL_ROWS = 4096  # random feature rows reused cyclically (values are random anyway)
_GLOVE_POOL = 1024  # distinct filler vectors


def _full_split_files(fmt: str, splits: Mapping[str, Sequence[str]]) -> list[str]:
    """Annotation files of every split (Charades: the .txt and the .csv of each)."""
    files: list[str] = []
    for split in splits:
        ann, csv_file = _split_files(splits, split, fmt)
        files += [ann] + ([csv_file] if csv_file else [])
    return files


def _keep(n: int, scale: float) -> int:
    return max(1, int(n * scale))


def _read_release(src: Path, fmt: str, splits: Mapping[str, Sequence[str]], scale: float
                  ) -> tuple[dict[str, str], dict[str, float], list[str]]:
    """Copy plan of the annotation files: ``{file: new content}`` ({} at scale 1: copied as they
    are), ``{video id: rows of features}`` and every sentence.  Cut to the first videos of each
    file at ``scale < 1``."""
    contents: dict[str, str] = {}
    rows: dict[str, float] = {}
    sentences: list[str] = []
    for split in splits:
        ann, csv_file = _split_files(splits, split, fmt)
        if fmt in ("activitynet", "tacos"):
            data = json.loads((src / ann).read_text())
            keep = list(data)[: _keep(len(data), scale)]
            for vid in keep:
                v = data[vid]
                sentences += [str(s) for s in v["sentences"]]
                if fmt == "activitynet":
                    rows[vid] = float(v["duration"]) * ACTIVITYNET_FPS / ACTIVITYNET_STRIDE
                else:
                    rows[vid] = (int(v["num_frames"]) - TACOS_WINDOW) // TACOS_STRIDE + 1
            if scale < 1:
                contents[ann] = json.dumps({vid: data[vid] for vid in keep}) + "\n"
            continue
        assert csv_file is not None
        lines = (src / ann).read_text().splitlines()
        ids = list(dict.fromkeys(line.split(" ", 1)[0] for line in lines if line.strip()))
        ids = ids[: _keep(len(ids), scale)]
        wanted = set(ids)
        kept = [line for line in lines if line.split(" ", 1)[0] in wanted]
        sentences += [line.split("##", 1)[1] for line in kept if "##" in line]
        with open(src / csv_file, newline="") as f:
            lengths = {r["id"]: float(r["length"]) for r in csv.DictReader(f) if r["id"] in wanted}
        for vid in ids:
            rows[vid] = lengths.get(vid, 30.0) * CHARADES_ROWS_PER_SECOND  # an id without a length: the parser says so
        if scale < 1:
            contents[ann] = "\n".join(kept) + "\n"
    return contents, rows, sentences


def write_full_release(src: str | Path, annotations_dir: str | Path, features_dir: str | Path, *, fmt: str,
                       splits: Mapping[str, Sequence[str]], scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Write the release of ``fmt`` at its real size (section comment above): the real annotation
    files of ``src`` (the files ``splits`` names) copied to ``annotations_dir``, random features of
    the real layout, dtype, rate and chunking in ``features_dir``.

    ``scale`` (0 < scale <= 1) keeps the first ``scale`` of each file's videos and ``scale`` of each
    video's rows (at least one of each): the same code path at a test's size.  Returns a summary
    (videos, rows, bytes of features, the sentences' count); deterministic from ``seed``.
    """
    import shutil

    if fmt not in FULL_FEATURES:
        raise ReleaseSpecError(f"dataset.format: no full-size writer for {fmt!r}; known: {sorted(FULL_FEATURES)}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    src, annotations_dir, features_dir = Path(src), Path(annotations_dir), Path(features_dir)
    for name in _full_split_files(fmt, splits):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name}: annotation file of the {fmt} release not found")
    contents, rows_f, sentences = _read_release(src, fmt, splits, scale)
    for name in _full_split_files(fmt, splits):
        if name in contents:
            write_text(annotations_dir / name, contents[name])
        else:
            with atomic_path(annotations_dir / name) as tmp:
                shutil.copyfile(src / name, tmp)
    spec = FULL_FEATURES[fmt]
    rows = {vid: max(1, int(r * scale)) for vid, r in rows_f.items()}
    rng = np.random.default_rng([seed, 21])
    pool = rng.standard_normal((_POOL_ROWS, spec["dim"])).astype(spec["dtype"])  # [P, D]

    def features(n: int) -> np.ndarray:  # [n, D]: a cyclic run of the pool from a random row
        start = int(rng.integers(_POOL_ROWS))
        return np.take(pool, np.arange(start, start + n), axis=0, mode="wrap")

    features_dir.mkdir(parents=True, exist_ok=True)
    if spec["file"] is None:  # one .npy per video
        for vid, n in rows.items():
            with atomic_path(features_dir / f"{vid}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, features(n), allow_pickle=False)
        write_json(features_dir / "SYNTHETIC.json", {"synthetic": True, "source": "fian.data.releases.write_full_release"})
    else:
        import h5py

        with atomic_path(features_dir / spec["file"]) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["synthetic"] = True
            f.attrs["source"] = "fian.data.releases.write_full_release (generated; not real video features)"
            for vid, n in rows.items():
                if fmt == "activitynet":
                    f.create_group(vid).create_dataset("c3d_features", data=features(n))
                else:
                    f.create_dataset(vid, data=features(n), compression=spec["compression"])
    total = sum(rows.values())
    return {"synthetic_features": True, "release": fmt, "scale": scale, "videos": len(rows), "rows": total,
            "feature_dim": spec["dim"], "dtype": spec["dtype"], "sentences": len(sentences),
            "feature_bytes_raw": total * spec["dim"] * np.dtype(spec["dtype"]).itemsize}


def release_sentences(src: str | Path, fmt: str, splits: Mapping[str, Sequence[str]]) -> list[str]:
    """Every sentence of the release's annotation files in ``src`` (for the GloVe-shaped file)."""
    return _read_release(Path(src), fmt, splits, 1.0)[2]


def write_glove_like(path: str | Path, words: Sequence[str], *, lines: int = GLOVE_840B_LINES, dim: int = 300,
                     seed: int = 0) -> dict[str, Any]:
    """A word-vector text file of glove.840B.300d's shape: ``lines`` lines of a word and ``dim``
    values (5 significant digits).  ``words`` (each once) sit at random lines spread over the whole
    file with vectors of their own; the other lines are filler words (``<n>filler``, never one of
    ``words``) with vectors from a pool; line ``lines // 2`` is ``. . .`` (a word with spaces, as in
    840B).  Written in blocks of lines (no per-value Python formatting), atomically."""
    words = list(dict.fromkeys(words))
    clash = [w for w in words if re.fullmatch(r"[0-9]+filler", w) or w == ". . ."]
    if clash:
        raise ValueError(f"words {clash[:5]} look like the filler lines' words")
    if len(words) + 1 > lines:
        raise ValueError(f"{len(words)} words and '. . .' do not fit in {lines} lines")
    rng = np.random.default_rng([seed, 840])

    def bodies(n: int) -> list[str]:  # n vectors as text: " v1 ... vdim"
        values = rng.normal(0.0, 0.35, size=(n, dim))
        buf = io.StringIO()
        np.savetxt(buf, values, fmt="%.5g", delimiter=" ")
        return [" " + b for b in buf.getvalue().splitlines()]

    spaced = lines // 2
    slots = np.setdiff1d(np.arange(lines), [spaced])
    at = np.sort(rng.choice(slots, size=len(words), replace=False))
    order = rng.permutation(len(words))  # which word sits at each chosen line
    own = bodies(len(words))
    pool = bodies(_GLOVE_POOL)
    word_at = dict(zip(at.tolist(), (words[i] for i in order), strict=True))
    body_at = dict(zip(at.tolist(), (own[i] for i in order), strict=True))
    block = 20_000
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for s in range(0, lines, block):
            out = []
            for n in range(s, min(s + block, lines)):
                w = word_at.get(n)
                if w is not None:
                    out.append(f"{w}{body_at[n]}\n")
                elif n == spaced:
                    out.append(f". . .{pool[n % _GLOVE_POOL]}\n")
                else:
                    out.append(f"{n}filler{pool[n % _GLOVE_POOL]}\n")
            f.write("".join(out))
    return {"lines": lines, "dim": dim, "words": len(words), "bytes": Path(path).stat().st_size,
            "spaced_line": spaced + 1}


# --------------------------------------------------------------------------------------------
# Charades-CD / ActivityNet-CD (Yuan et al. 2021): a re-split of a release's pairs
# --------------------------------------------------------------------------------------------

CD_SPLITS = ("train", "val", "test_iid", "test_ood")
CD_DECODE_FPS = 16.0  # Charades-CD's decode_fps (every record of the real files)


def write_cd_release(tables: Mapping[str, Any], annotations_dir: str | Path, *, fmt: str,
                     splits: Mapping[str, Sequence[str]], ood_from: float = 0.5) -> dict[str, int]:
    """Write a tiny twin of Charades-CD (``fmt="charades_cd"``) or ActivityNet-CD (``"activitynet"``)
    from the parsed pairs of a (generated) release: ``tables`` are its annotation tables (columns of
    :data:`fian.data.annotations.COLUMNS`; the video ids and durations of its feature store).

    As Yuan et al. re-split all of a dataset's pairs by moment position, each video goes to
    ``test_ood`` when its first moment starts at or after ``ood_from`` of the video (ours: late
    moments, rare in training), otherwise to train / val / test_iid in turn (3 : 1 : 1).  One
    test_ood video gets an extra pair that starts after the video ends, as Charades-CD's LEOL6 /
    AKKWU pairs (``dataset.policy.outside_video``).  Files: the names of ``splits`` (one JSON each),
    with the real files' keys (Charades-CD: ``video_duration``, ``timestamps``, ``sentences``,
    ``framestamps``, ``decode_fps``, ``encoded_sentences``, ``video_fps``).  Returns pairs per split.
    """
    import pandas as pd

    if fmt not in ("charades_cd", "activitynet"):
        raise ReleaseSpecError(f"dataset.format: no CD release writer for {fmt!r}; known: charades_cd, activitynet")
    missing = [s for s in CD_SPLITS if len(splits.get(s, ())) != 1]
    if missing:
        raise ReleaseSpecError(f"dataset.splits: a CD release names one JSON file for each of {list(CD_SPLITS)}; "
                               f"not for {missing}")
    df = pd.concat(list(tables.values()), ignore_index=True)
    content: dict[str, dict[str, Any]] = {s: {} for s in CD_SPLITS}
    iid = ("train", "train", "train", "val", "test_iid")
    k = 0
    for vid, rows in df.groupby("video_id", sort=True):
        d = float(rows["duration"].iat[0])
        pairs = [(float(r.start), float(r.end), str(r.sentence)) for r in rows.itertuples()]
        if pairs[0][0] / d >= ood_from:
            split = "test_ood"
        else:
            split, k = iid[k % len(iid)], k + 1
        if split == "test_ood" and not content["test_ood"]:
            pairs.append((d + 1.0, d + 2.0, pairs[0][2]))  # starts after the video ends (the quirk)
        ts = [[round(s, 2), round(e, 2)] for s, e, _ in pairs]
        if fmt == "activitynet":
            content[split][vid] = {"duration": round(d, 2), "timestamps": ts, "sentences": [t for *_, t in pairs]}
        else:
            content[split][vid] = {
                "framestamps": [[int(s * CD_DECODE_FPS), int(e * CD_DECODE_FPS)] for s, e in ts],
                "decode_fps": CD_DECODE_FPS,
                "encoded_sentences": [[1 + sum(w.encode()) % 997 for w in t.split()] for *_, t in pairs],
                "sentences": [t for *_, t in pairs],
                "video_fps": -1.0,
                "timestamps": ts,
                "video_duration": d,
            }
    annotations_dir = Path(annotations_dir)
    counts = {}
    for split in CD_SPLITS:
        if not content[split]:
            raise ReleaseSpecError(f"CD re-split: no video went to {split} (too few videos, or ood_from={ood_from})")
        write_text(annotations_dir / splits[split][0], json.dumps(content[split]) + "\n")
        counts[split] = sum(len(r["sentences"]) for r in content[split].values())
    return counts
