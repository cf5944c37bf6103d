"""Feature store (one HDF5 per dataset), importers of the released feature files, downsampling.

Store layout (docs/ARCHITECTURE.md "Feature store"): file attrs ``backbone``, ``feature_dim``,
``random_weights``, ``source``; one dataset ``/<video_id>`` of shape ``[n, D]`` float32 per video,
with attrs ``fps`` (features per second of video) and ``frames_per_feature`` where known.

Importers read the public releases, one per ``dataset.feature_layout``:

    activitynet_c3d   one HDF5, group ``<vid>`` holding ``c3d_features`` [n, 500]
                      (``sub_activitynet_v1-3.c3d.hdf5``)
    tacos_c3d         one HDF5, ``<vid>`` -> [n, 4096] (``tall_c3d_features.hdf5``)
    i3d_hdf5          one HDF5, ``<vid>`` -> [n, 1024]
    i3d_npy           a folder of ``<vid>.npy`` files, each [n, 1024]
    store             our own store (e.g. written by the extract stage)

Time (docs/ARCHITECTURE.md "Time"): every video is resampled to ``T`` steps; step ``i`` spans
``[i, i+1) * duration / T`` seconds, see :func:`downsample`, :func:`seconds_to_steps`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fian.io import atomic_path

log = logging.getLogger(__name__)

Layout = Literal["activitynet_c3d", "tacos_c3d", "i3d_npy", "i3d_hdf5", "store"]

# The file name each public release uses; any other name works when it is the only HDF5 file in
# the raw folder (bring your own dataset).
RELEASE_FILE: dict[str, str] = {
    "activitynet_c3d": "sub_activitynet_v1-3.c3d.hdf5",
    "tacos_c3d": "tall_c3d_features.hdf5",
}
# activitynet_c3d stores each video as a group with this one dataset inside.
ACTIVITYNET_DATASET = "c3d_features"
# Video-file extensions that some releases keep in the annotation ids but not in the feature keys
# (TACoS: the 2D-TAN annotations say "s13-d21.avi"; the 2D-TAN loader indexes tall_c3d_features.hdf5
# with that id unchanged, other re-releases key by the bare stem "s13-d21").
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm")


class FeatureError(ValueError):
    """Bad feature data: the message names the file and, where it applies, the video."""


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def check_video_id(video_id: str, where: str | Path) -> None:
    if not isinstance(video_id, str) or not video_id or "/" in video_id or video_id in (".", ".."):
        raise FeatureError(
            f"{where}: video id {video_id!r} cannot be an HDF5 dataset name (empty or contains '/')"
        )


def check_features(array: Any, *, feature_dim: int | None, where: str | Path, video_id: str) -> np.ndarray:
    """Return ``array`` as float32 ``[n, D]``; raise :class:`FeatureError` naming file and video."""
    a = np.asarray(array)
    if a.ndim != 2:
        raise FeatureError(
            f"{where}: video {video_id!r}: features must be [n, D], got shape {tuple(a.shape)}"
        )
    if a.shape[0] < 1:
        raise FeatureError(f"{where}: video {video_id!r}: no feature rows (shape {tuple(a.shape)})")
    if feature_dim is not None and a.shape[1] != feature_dim:
        raise FeatureError(
            f"{where}: video {video_id!r}: feature dimension {a.shape[1]} != expected {feature_dim} "
            f"(dataset.feature_dim)"
        )
    if not np.issubdtype(a.dtype, np.number):
        raise FeatureError(f"{where}: video {video_id!r}: non-numeric features (dtype {a.dtype})")
    a = a.astype(np.float32, copy=False)
    finite = np.isfinite(a)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise FeatureError(
            f"{where}: video {video_id!r}: {int((~finite).sum())} non-finite value(s) (NaN/inf), first at "
            f"row {int(bad[0])}, column {int(bad[1])}"
        )
    return a


# --------------------------------------------------------------------------------------------
# Store: writer and reader
# --------------------------------------------------------------------------------------------


def write_store(
    path: str | Path,
    items: Iterable[tuple[str, Any, Mapping[str, Any] | None]],
    *,
    backbone: str,
    feature_dim: int,
    attrs: Mapping[str, Any] | None = None,
) -> int:
    """Write a feature store atomically (temp file + rename); return the number of videos.

    ``items`` yields ``(video_id, array [n, D], per_video_attrs)``.  ``attrs`` become file attrs
    (``random_weights`` defaults to False, ``source`` to ""). Every array is validated
    (:func:`check_features`); on any error nothing is left at ``path``.
    """
    import h5py

    path = Path(path)
    file_attrs: dict[str, Any] = {"random_weights": False, "source": ""}
    file_attrs.update(attrs or {})
    file_attrs.update(backbone=str(backbone), feature_dim=int(feature_dim))
    n = 0
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in file_attrs.items():
            f.attrs[key] = value
        for video_id, array, video_attrs in items:
            check_video_id(video_id, path)
            if video_id in f:
                raise FeatureError(f"{path}: video {video_id!r} given twice")
            a = check_features(array, feature_dim=feature_dim, where=path, video_id=video_id)
            ds = f.create_dataset(video_id, data=a)
            for key, value in (video_attrs or {}).items():
                if value is not None:
                    ds.attrs[key] = value
            n += 1
    log.info("wrote %d videos to %s", n, path)
    return n


def open_hdf5(path: Path, what: str) -> Any:
    """``h5py.File(path, "r")``; an unreadable file raises :class:`FeatureError` naming it."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise FeatureError(f"{path}: not a readable {what} (truncated or corrupt?): {e}") from None


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


class FeatureStore:
    """Read-only access to a feature store.

    >>> with FeatureStore("features.h5") as store:  # doctest: +SKIP
    ...     x = store.get("v_abc")                     # float32 [n, D]

    A file that is not a readable HDF5 store (truncated, corrupt, missing attrs) raises
    :class:`FeatureError` naming the file; a video with NaN/inf or the wrong width raises naming the
    file and the video.
    """

    def __init__(self, path: str | Path) -> None:

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: feature store not found")
        self._file = open_hdf5(self.path, "feature store")
        try:
            self.attrs: dict[str, Any] = {k: _attr(v) for k, v in self._file.attrs.items()}
        except (OSError, RuntimeError) as e:
            self.close()
            raise FeatureError(f"{self.path}: cannot read the file attrs (corrupt?): {e}") from None
        missing = [k for k in ("backbone", "feature_dim") if k not in self.attrs]
        if missing:
            self.close()
            raise FeatureError(f"{self.path}: not a feature store: file attrs {missing} missing")
        self.feature_dim = int(self.attrs["feature_dim"])

    # context manager ---------------------------------------------------------------------
    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
            self._file = None

    # access ------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        try:
            return sorted(self._file.keys())
        except (OSError, RuntimeError) as e:
            raise FeatureError(f"{self.path}: cannot list the videos (corrupt?): {e}") from None

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and "/" not in video_id and bool(video_id) and video_id in self._file

    def __len__(self) -> int:
        return len(self._file)

    def get(self, video_id: str) -> np.ndarray:
        """float32 ``[n, D]`` of one video."""
        if video_id not in self:
            raise KeyError(f"{self.path}: video {video_id!r} is not in the feature store")
        try:
            a = self._file[video_id][()]
        except (OSError, RuntimeError) as e:
            raise FeatureError(f"{self.path}: video {video_id!r}: cannot read (corrupt?): {e}") from None
        return check_features(a, feature_dim=self.feature_dim, where=self.path, video_id=video_id)

    def video_attrs(self, video_id: str) -> dict[str, Any]:
        if video_id not in self:
            raise KeyError(f"{self.path}: video {video_id!r} is not in the feature store")
        return {k: _attr(v) for k, v in self._file[video_id].attrs.items()}


# --------------------------------------------------------------------------------------------
# Importers of the released files
# --------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did: counts for counts.json and the log."""

    source: str
    layout: str
    requested: int = 0
    imported: int = 0
    missing: list[str] = field(default_factory=list)
    # how annotation ids were matched to feature keys: "exact" or "stem" (extension dropped)
    matched: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "layout": self.layout,
            "requested": self.requested,
            "imported": self.imported,
            "missing_features": len(self.missing),
            "missing_ids": sorted(self.missing),
            "matched": dict(self.matched),
        }


def _candidate_keys(video_id: str) -> list[tuple[str, str]]:
    """Feature keys to try for an annotation id, in order, with the name of the rule."""
    keys = [("exact", video_id)]
    for ext in VIDEO_EXTENSIONS:
        if video_id.lower().endswith(ext) and len(video_id) > len(ext):
            keys.append(("stem", video_id[: -len(ext)]))
    return keys


def find_feature_file(raw: Path, layout: str) -> Path:
    """The HDF5 file of an HDF5 layout inside ``raw`` (or ``raw`` itself when it is a file).

    The release's own name wins; otherwise the only ``*.hdf5``/``*.h5`` file of the folder.  Hidden
    files (temps of killed writers, ``.<name>.fian-tmp....h5``) are never candidates.
    """
    if raw.is_file():
        return raw
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: raw feature folder not found")
    standard = RELEASE_FILE.get(layout)
    if standard:
        # also inside a folder an archive extracted to, never inside a hidden (temp) folder
        hits = sorted(h for h in raw.rglob(standard) if not any(q.startswith(".") for q in h.relative_to(raw).parts))
        if hits:
            return hits[0]
    # never a hidden file: a temp of fian.io.atomic_path (".<name>.fian-tmp.<host>.<pid>-...h5", a writer
    # killed mid-write) or another tool's (macOS "._x.h5") is not a release
    found = sorted(p for p in raw.iterdir() if p.is_file() and p.suffix in (".hdf5", ".h5") and not p.name.startswith("."))
    if len(found) == 1:
        return found[0]
    want = f"{standard} or a single *.hdf5/*.h5 file" if standard else "a single *.hdf5/*.h5 file"
    raise FileNotFoundError(f"{raw}: expected {want} for layout {layout}, found {[p.name for p in found]}")


class _Source:
    """Uniform read access to a released feature file/folder (keys resolved per annotation id)."""

    def __init__(self, raw: Path, layout: str) -> None:
        self.layout = layout
        self._h5 = None
        if layout == "i3d_npy":
            if not raw.is_dir():
                raise FileNotFoundError(f"{raw}: folder of <video_id>.npy files not found (layout i3d_npy)")
            self.path = raw
        elif layout in ("activitynet_c3d", "tacos_c3d", "i3d_hdf5", "store"):
            self.path = find_feature_file(raw, layout)
            self._h5 = open_hdf5(self.path, "HDF5 file")
        else:
            raise ValueError(f"unknown dataset.feature_layout {layout!r}")

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()

    def _has(self, key: str) -> bool:
        if "/" in key:
            return False
        if self._h5 is None:
            return (self.path / f"{key}.npy").is_file()
        if key not in self._h5:
            return False
        if self.layout == "activitynet_c3d":
            import h5py

            node = self._h5[key]
            if not isinstance(node, h5py.Group) or ACTIVITYNET_DATASET not in node:
                raise FeatureError(
                    f"{self.path}: video {key!r}: expected a group with '{ACTIVITYNET_DATASET}' (layout activitynet_c3d)"
                )
        return True

    def resolve(self, video_id: str) -> tuple[str, str] | None:
        for rule, key in _candidate_keys(video_id):
            if self._has(key):
                return rule, key
        return None

    def read(self, key: str, video_id: str) -> np.ndarray:
        where = self.path / f"{key}.npy" if self._h5 is None else self.path
        try:
            if self._h5 is None:
                return np.load(where, allow_pickle=False)
            node = self._h5[key]
            if self.layout == "activitynet_c3d":
                node = node[ACTIVITYNET_DATASET]
            return node[()]
        except (OSError, ValueError, RuntimeError) as e:
            raise FeatureError(f"{where}: video {video_id!r}: cannot read features (corrupt?): {e}") from None

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of one video's features, without reading them (for limits checked before reading)."""
        where = self.path / f"{key}.npy" if self._h5 is None else self.path
        try:
            if self._h5 is None:
                return tuple(np.load(where, mmap_mode="r", allow_pickle=False).shape)
            node = self._h5[key]
            return tuple((node[ACTIVITYNET_DATASET] if self.layout == "activitynet_c3d" else node).shape)
        except (OSError, ValueError, RuntimeError, AttributeError) as e:
            raise FeatureError(f"{where}: cannot read the features' shape (corrupt?): {e}") from None

    def video_attrs(self, key: str) -> dict[str, Any]:
        if self.layout == "store" and self._h5 is not None:
            return {k: _attr(v) for k, v in self._h5[key].attrs.items()}
        return {}

    def file_attrs(self) -> dict[str, Any]:
        if self._h5 is None:
            return {}
        return {k: _attr(v) for k, v in self._h5.attrs.items()}


# the file attrs of a store written by the extract stage (fian.extract.extractor.assemble_store) that
# say how its features were made; an import of such a store keeps them (and its "source")
EXTRACT_RECIPE_ATTRS = ("clip_len", "frames_per_feature", "weights_sha256", "decode_fps")


def import_features(
    raw: str | Path,
    video_ids: Iterable[str],
    out: str | Path,
    *,
    layout: str,
    feature_dim: int,
    backbone: str,
    missing: Literal["fail", "drop"] = "fail",
    durations: Mapping[str, float] | None = None,
    frames_per_feature: int | None = None,
) -> ImportReport:
    """Copy the features of ``video_ids`` from a released file (``layout``) into a store at ``out``.

    Only the requested videos are imported, keyed by their annotation id.  A requested id that the
    release lacks is an error naming the id and the file (``missing="fail"``), or is dropped and
    counted (``"drop"``).  ``durations`` (seconds) give each video's ``fps`` attr (features per
    second).  Nothing is written when any check fails.
    """
    raw = Path(raw)
    ids = sorted(set(video_ids))
    src = _Source(raw, layout)
    try:
        report = ImportReport(source=str(src.path), layout=layout, requested=len(ids))
        keys: dict[str, str] = {}
        for vid in ids:
            check_video_id(vid, src.path)
            hit = src.resolve(vid)
            if hit is None:
                report.missing.append(vid)
                continue
            rule, key = hit
            keys[vid] = key
            report.matched[rule] = report.matched.get(rule, 0) + 1
        if report.missing:
            first = ", ".join(repr(v) for v in report.missing[:5])
            more = f" (+{len(report.missing) - 5} more)" if len(report.missing) > 5 else ""
            msg = f"{src.path}: {len(report.missing)} annotated video(s) have no features: {first}{more}"
            if missing == "fail":
                raise FeatureError(msg + " (dataset.policy.missing_features: fail)")
            log.warning("%s; dropped (dataset.policy.missing_features: drop)", msg)
        if report.matched.get("stem"):
            log.info(
                "%s: %d id(s) matched without their video-file extension", src.path, report.matched["stem"]
            )

        def items() -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
            for vid, key in keys.items():
                a = check_features(src.read(key, vid), feature_dim=feature_dim, where=src.path, video_id=vid)
                attrs = dict(src.video_attrs(key))
                if durations is not None and vid in durations and durations[vid] > 0:
                    attrs["fps"] = float(a.shape[0] / durations[vid])
                if frames_per_feature is not None:
                    attrs["frames_per_feature"] = int(frames_per_feature)
                yield vid, a, attrs

        # provenance tags of the source survive the import (a random-weight or generated source stays tagged)
        src_attrs = src.file_attrs()
        inherited = {k: v for k, v in src_attrs.items() if k in ("random_weights", "synthetic")}
        source = f"{layout}:{src.path.name}"
        if layout == "store" and str(src_attrs.get("source", "")).startswith("extract:"):
            # a store the extract stage wrote: its recipe (how to recompute the features from a
            # video: fian.predict.feature_recipe) carries over, and the import is recorded beside it
            made_by = str(src_attrs.get("backbone", ""))
            if made_by and made_by != str(backbone):
                raise FeatureError(
                    f"{src.path}: extracted with the {made_by} backbone ({src_attrs['source']}), but "
                    f"dataset.backbone is {backbone!r}: fix one of them"
                )
            inherited.update({k: src_attrs[k] for k in EXTRACT_RECIPE_ATTRS if k in src_attrs})
            inherited["imported_from"] = source
            source = str(src_attrs["source"])
        file_attrs = {
            "random_weights": False,
            **inherited,
            "source": source,
            "layout": layout,
        }
        report.imported = write_store(
            out, items(), backbone=backbone, feature_dim=feature_dim, attrs=file_attrs
        )
    finally:
        src.close()
    return report


# --------------------------------------------------------------------------------------------
# Downsampling to T steps, and the step <-> seconds mapping
# --------------------------------------------------------------------------------------------


def segment_bounds(n: int, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[start_i, end_i)`` pooled into step ``i`` when ``n >= num_steps`` (Section 4.3).

    ``start_i = floor(i n / T)``, ``end_i = max(start_i + 1, floor((i + 1) n / T))``.
    """
    i = np.arange(num_steps, dtype=np.int64)
    start = (i * n) // num_steps
    end = np.maximum(start + 1, ((i + 1) * n) // num_steps)
    return start, end


def repeat_index(n: int, num_steps: int) -> np.ndarray:
    """Row used for step ``i`` when ``n < num_steps``: the row whose span holds the step's centre.

    Feature row ``j`` spans ``[j, j+1) * duration / n``; the centre of step ``i`` is
    ``(i + 0.5) * duration / T``, so ``j = floor((2i + 1) n / (2T))``.
    """
    i = np.arange(num_steps, dtype=np.int64)
    return ((2 * i + 1) * n) // (2 * num_steps)


def downsample(
    features: np.ndarray, num_steps: int, shorter: Literal["repeat", "pad"] = "repeat"
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``[n, D]`` features to ``[T, D]``; return ``(video [T, D] float32, mask [T] bool)``.

    n > T: mean over T equal segments (:func:`segment_bounds`), vectorised with ``np.add.reduceat``;
    n == T: unchanged; n < T: nearest-row repetition (:func:`repeat_index`).  Both keep the uniform
    time mapping: step ``i`` spans ``[i, i+1) * duration / T`` seconds, and the mask is all True.
    """
    x = np.asarray(features, dtype=np.float32)  # [n, D]
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"downsample needs [n >= 1, D] features, got shape {tuple(x.shape)}")
    n, T = x.shape[0], int(num_steps)
    mask = np.ones(T, dtype=bool)
    if n == T:
        return x.copy(), mask
    if n > T:
        start, end = segment_bounds(n, T)
        # n >= T makes the segments a partition of the rows with strictly increasing starts
        sums = np.add.reduceat(x.astype(np.float64), start, axis=0)  # [T, D]
        return (sums / (end - start)[:, None]).astype(np.float32), mask
    if shorter == "repeat":
        return x[repeat_index(n, T)], mask
    raise ValueError(
        "features.shorter: pad is not implemented (it would break the uniform step <-> seconds mapping "
        "of docs/ARCHITECTURE.md 'Time'); use repeat"
    )


def seconds_to_steps(seconds: Any, duration: Any, num_steps: int) -> Any:
    """Seconds -> fractional steps: ``steps = seconds / duration * T`` (numpy or torch, broadcasting)."""
    return seconds / duration * num_steps


def steps_to_seconds(steps: Any, duration: Any, num_steps: int) -> Any:
    """Fractional steps -> seconds: ``seconds = steps * duration / T``."""
    return steps * duration / num_steps


def covering_steps(start: float, end: float, duration: float, num_steps: int) -> tuple[int, int]:
    """The steps ``[first, last)`` that a moment ``[start, end)`` seconds overlaps."""
    s = float(seconds_to_steps(start, duration, num_steps))
    e = float(seconds_to_steps(end, duration, num_steps))
    first = min(max(int(np.floor(s)), 0), num_steps - 1)
    last = max(min(int(np.ceil(e)), num_steps), first + 1)
    return first, last
