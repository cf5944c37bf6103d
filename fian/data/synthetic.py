"""The embedded default dataset: synthetic videos whose queries need word-level grounding.

Each video is a timeline of events; an event is (actor, action, colour, object) drawn from small
vocabularies, e.g. "the man opens the red door".  Its feature rows are a noisy sum of one prototype
vector per attribute value (plus background rows between events), so every word of a query is
visible in the features, but only the full combination of words identifies an event:

* several events of a video share attributes (a distractor differs from another event in exactly
  one attribute: "the man opens the BLUE door"), so a model must read every word;
* one event tuple occurs twice, so "... again" (the second occurrence) and "... for the first
  time" (the first) differ only in the temporal words;
* "after X, Y" is the first Y that starts after X ends, "Y before X" the last Y that ends before X
  starts; "X then Y" spans X and the event right after it.

Event positions and lengths are uniform over the video, so a moment prior (any query-independent
guess) cannot solve it (docs/SYNTHETIC.md).  Written in public layouts: ActivityNet-Captions JSON
(``{vid: {duration, timestamps, sentences}}``) and an activitynet_c3d HDF5 (``<vid>/c3d_features``).
Deterministic from ``seed``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fian.io import atomic_path, write_json

ACTORS = ("person", "man", "woman", "child")
ACTIONS = ("opens", "closes", "picks up", "puts down", "washes", "holds")
COLOURS = ("red", "blue", "green", "yellow")
OBJECTS = ("door", "box", "cup", "bottle", "book", "bag")
ATTRIBUTES = (ACTORS, ACTIONS, COLOURS, OBJECTS)
KINDS = ("unique", "again", "first", "after", "before", "then")

FEATURES_FILE = "synthetic_c3d.hdf5"  # activitynet_c3d layout (the importer finds the only HDF5 file)
META_FILE = "synthetic_meta.json"  # events and query kinds, for inspection and tests (not an annotation)

Attrs = tuple[int, int, int, int]  # indices into ACTORS, ACTIONS, COLOURS, OBJECTS


@dataclass(frozen=True)
class SyntheticSpec:
    """The ``dataset.synthetic`` params (every key optional; unknown keys are an error)."""

    seed: int = 0
    n_videos: Mapping[str, int] = field(default_factory=lambda: {"train": 300, "val": 60, "test": 60})
    events: tuple[int, int] = (4, 7)  # events per video, inclusive range
    raw_steps: tuple[int, int] = (40, 160)  # feature rows per video before downsampling, inclusive
    duration: tuple[float, float] = (30.0, 150.0)  # seconds
    noise: float = 1.0  # std of the Gaussian noise per feature entry (prototype entries have std 1)
    queries_per_video: int = 4
    # write the dataset as a tiny copy of the public release of dataset.format (file names, ids,
    # units, quirks: fian/data/releases.py) instead of the synthetic demo's own files
    release: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], feature_dim: int) -> SyntheticSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"dataset.synthetic: unknown key(s) {unknown}; known: {sorted(known)}")
        kw: dict[str, Any] = dict(data)
        for key in ("events", "raw_steps", "duration"):
            if key in kw:
                v = kw[key]
                if not isinstance(v, list | tuple) or len(v) != 2 or v[0] > v[1]:
                    raise ValueError(
                        f"dataset.synthetic.{key}: expected [low, high] with low <= high, got {v!r}"
                    )
                kw[key] = tuple(v)
        if "n_videos" in kw and not isinstance(kw["n_videos"], Mapping):
            raise ValueError(f"dataset.synthetic.n_videos: expected {{split: count}}, got {kw['n_videos']!r}")
        spec = cls(**kw)
        if spec.events[0] < 4:
            raise ValueError(
                "dataset.synthetic.events: need at least 4 events per video (repeat + distractors)"
            )
        if spec.raw_steps[0] < 2 * spec.events[1] + 1:
            raise ValueError("dataset.synthetic.raw_steps: too few rows for the events (need > 2 x events)")
        if spec.duration[0] <= 0 or spec.noise < 0 or spec.queries_per_video < 1 or feature_dim < 8:
            raise ValueError(
                "dataset.synthetic: duration > 0, noise >= 0, queries_per_video >= 1, feature_dim >= 8"
            )
        return spec


@dataclass(frozen=True)
class Event:
    attrs: Attrs
    start: float  # seconds
    end: float

    def phrase(self) -> str:
        a, v, c, o = self.attrs
        return f"the {ACTORS[a]} {ACTIONS[v]} the {COLOURS[c]} {OBJECTS[o]}"


@dataclass(frozen=True)
class Query:
    sentence: str
    start: float
    end: float
    kind: str
    events: tuple[int, ...]  # the events the sentence names (target first)


@dataclass
class SyntheticVideo:
    video_id: str
    duration: float
    events: list[Event]
    queries: list[Query]
    features: np.ndarray  # [n, D] float32


@dataclass
class SyntheticDataset:
    splits: dict[str, list[SyntheticVideo]]
    spec: SyntheticSpec
    feature_dim: int

    def annotations(self, split: str) -> dict[str, Any]:
        """ActivityNet-Captions JSON content of one split."""
        return {
            v.video_id: {
                "duration": v.duration,
                "timestamps": [[q.start, q.end] for q in v.queries],
                "sentences": [q.sentence for q in v.queries],
            }
            for v in self.splits[split]
        }


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def prototypes(seed: int, feature_dim: int) -> list[np.ndarray]:
    """One ``[n_values, D]`` matrix per attribute, plus the background ``[1, D]`` (last)."""
    rng = np.random.default_rng([seed, 7])
    return [rng.standard_normal((len(vals), feature_dim)).astype(np.float32) for vals in ATTRIBUTES] + [
        rng.standard_normal((1, feature_dim)).astype(np.float32)
    ]


def _event_tuples(rng: np.random.Generator, k: int) -> list[Attrs]:
    """k attribute tuples: one repeated tuple, distractors differing in one attribute, the rest random."""

    def rand() -> Attrs:
        return tuple(int(rng.integers(len(vals))) for vals in ATTRIBUTES)  # type: ignore[return-value]

    repeated = rand()
    tuples: list[Attrs] = [repeated, repeated]
    while len(tuples) < k:
        if rng.random() < 0.7:  # distractor: copy an existing tuple, change one attribute
            base = list(tuples[int(rng.integers(len(tuples)))])
            which = int(rng.integers(4))
            base[which] = int(
                (base[which] + 1 + rng.integers(len(ATTRIBUTES[which]) - 1)) % len(ATTRIBUTES[which])
            )
            cand: Attrs = tuple(base)  # type: ignore[assignment]
        else:
            cand = rand()
        if cand not in tuples:
            tuples.append(cand)
    # the two occurrences of the repeated tuple at least one event apart, so that "again",
    # "for the first time", "after" and "before" pick different events
    pairs = [(p, q) for p in range(k) for q in range(p + 2, k)]
    p0, p1 = pairs[int(rng.integers(len(pairs)))]
    rest = [tuples[2 + int(i)] for i in rng.permutation(k - 2)]
    out: list[Attrs] = []
    for pos in range(k):
        out.append(repeated if pos in (p0, p1) else rest.pop())
    return out


def _timeline(rng: np.random.Generator, k: int, duration: float) -> list[tuple[float, float]]:
    """k non-overlapping (start, end) in seconds with random lengths and gaps."""
    lengths = rng.uniform(1.0, 3.5, size=k)
    gaps = rng.uniform(0.15, 1.6, size=k + 1)
    scale = duration / (lengths.sum() + gaps.sum())
    t, spans = gaps[0] * scale, []
    for i in range(k):
        s, e = t, t + lengths[i] * scale
        spans.append((round(float(s), 2), round(float(e), 2)))
        t = e + gaps[i + 1] * scale
    return spans


def _queries(rng: np.random.Generator, events: list[Event], n: int) -> list[Query]:
    """Up to ``n`` queries of distinct kinds (round robin over a shuffled kind order)."""
    count: dict[Attrs, list[int]] = {}
    for i, ev in enumerate(events):
        count.setdefault(ev.attrs, []).append(i)
    unique = [i for i, ev in enumerate(events) if len(count[ev.attrs]) == 1]
    repeated = [occ for occ in count.values() if len(occ) >= 2]
    cands: dict[str, list[Query]] = {k: [] for k in KINDS}
    for i in unique:
        cands["unique"].append(Query(events[i].phrase(), events[i].start, events[i].end, "unique", (i,)))
    for occ in repeated:
        a, b = occ[0], occ[1]
        cands["again"].append(
            Query(f"{events[b].phrase()} again", events[b].start, events[b].end, "again", (b, a))
        )
        cands["first"].append(
            Query(f"{events[a].phrase()} for the first time", events[a].start, events[a].end, "first", (a, b))
        )
    for x in unique:  # anchors must be unambiguous
        for occ in count.values():
            after = [j for j in occ if events[j].start >= events[x].end]
            before = [j for j in occ if events[j].end <= events[x].start]
            if after and (before or len(occ) > 1 or rng.random() < 0.5):
                y = after[0]
                s = f"after {events[x].phrase()} , {events[y].phrase()}"
                cands["after"].append(Query(s, events[y].start, events[y].end, "after", (y, x)))
            if before and (after or len(occ) > 1 or rng.random() < 0.5):
                y = before[-1]
                s = f"{events[y].phrase()} before {events[x].phrase()}"
                cands["before"].append(Query(s, events[y].start, events[y].end, "before", (y, x)))
        if x + 1 < len(events):
            y = x + 1
            s = f"{events[x].phrase()} then {events[y].phrase()}"
            cands["then"].append(Query(s, events[x].start, events[y].end, "then", (x, y)))
    out: list[Query] = []
    seen: set[str] = set()
    kinds = [KINDS[int(i)] for i in rng.permutation(len(KINDS))]
    while len(out) < n and any(cands[k] for k in kinds):
        for kind in kinds:
            pool = cands[kind]
            while pool:
                q = pool.pop(int(rng.integers(len(pool))))
                if q.sentence not in seen:
                    seen.add(q.sentence)
                    out.append(q)
                    break
            if len(out) >= n:
                break
    return out


def _features(
    rng: np.random.Generator,
    protos: list[np.ndarray],
    events: list[Event],
    duration: float,
    n: int,
    noise: float,
) -> np.ndarray:
    """``[n, D]``: each row is the sum of its event's attribute prototypes (or background) + noise."""
    D = protos[0].shape[1]
    centre = (np.arange(n) + 0.5) * duration / n  # [n] seconds
    x = np.repeat(protos[-1], n, axis=0).copy()  # [n, D] background everywhere
    for ev in events:
        rows = (centre >= ev.start) & (centre < ev.end)
        if not rows.any():  # an event shorter than a row still marks its nearest row
            rows[min(int((ev.start + ev.end) / 2 / duration * n), n - 1)] = True
        signal = sum(p[a] for p, a in zip(protos[:4], ev.attrs, strict=True))  # [D]
        x[rows] = 0.25 * protos[-1][0] + signal
    x += noise * rng.standard_normal((n, D)).astype(np.float32)
    return x.astype(np.float32)


def generate(spec: SyntheticSpec, feature_dim: int) -> SyntheticDataset:
    """Build every split in memory; same ``spec`` -> same dataset, bit for bit."""
    protos = prototypes(spec.seed, feature_dim)
    splits: dict[str, list[SyntheticVideo]] = {}
    for s_idx, (split, n_videos) in enumerate(sorted(spec.n_videos.items())):
        videos = []
        for i in range(int(n_videos)):
            rng = np.random.default_rng([spec.seed, s_idx, i])
            k = int(rng.integers(spec.events[0], spec.events[1] + 1))
            duration = round(float(rng.uniform(*spec.duration)), 2)
            n = int(rng.integers(spec.raw_steps[0], spec.raw_steps[1] + 1))
            tuples = _event_tuples(rng, k)
            events = [Event(t, s, e) for t, (s, e) in zip(tuples, _timeline(rng, k, duration), strict=True)]
            queries = _queries(rng, events, spec.queries_per_video)
            feats = _features(rng, protos, events, duration, n, spec.noise)
            videos.append(SyntheticVideo(f"v_syn_{split}_{i:05d}", duration, events, queries, feats))
        splits[split] = videos
    return SyntheticDataset(splits=splits, spec=spec, feature_dim=feature_dim)


# --------------------------------------------------------------------------------------------
# Writing in the public layouts
# --------------------------------------------------------------------------------------------


def write_synthetic(
    ds: SyntheticDataset, annotations_dir: str | Path, features_dir: str | Path
) -> dict[str, Any]:
    """ActivityNet-style ``<split>.json`` files + ``synthetic_c3d.hdf5`` (activitynet_c3d layout).

    Returns summary counts.  Every file is written atomically.
    """
    import h5py

    annotations_dir, features_dir = Path(annotations_dir), Path(features_dir)
    summary: dict[str, Any] = {
        "synthetic": True,
        "seed": ds.spec.seed,
        "feature_dim": ds.feature_dim,
        "splits": {},
    }
    meta: dict[str, Any] = {"spec": asdict(ds.spec), "videos": {}}
    for split, videos in ds.splits.items():
        with atomic_path(annotations_dir / f"{split}.json") as tmp:
            tmp.write_text(json.dumps(ds.annotations(split), indent=1) + "\n")
        kinds: dict[str, int] = {}
        for v in videos:
            for q in v.queries:
                kinds[q.kind] = kinds.get(q.kind, 0) + 1
            meta["videos"][v.video_id] = {
                "split": split,
                "events": [{"phrase": e.phrase(), "start": e.start, "end": e.end} for e in v.events],
                "queries": [
                    {"sentence": q.sentence, "kind": q.kind, "events": list(q.events)} for q in v.queries
                ],
            }
        summary["splits"][split] = {
            "videos": len(videos),
            "queries": sum(len(v.queries) for v in videos),
            "kinds": dict(sorted(kinds.items())),
        }
    write_json(annotations_dir / META_FILE, meta)
    with atomic_path(features_dir / FEATURES_FILE) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["synthetic"] = True
        f.attrs["seed"] = ds.spec.seed
        f.attrs["source"] = "fian.data.synthetic (generated; not real video features)"
        for videos in ds.splits.values():
            for v in videos:
                f.create_group(v.video_id).create_dataset("c3d_features", data=v.features)
    return summary
