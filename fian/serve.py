"""The served model: a request (rows of a table) -> checked inputs -> ranked windows, over
:class:`fian.predict.Predictor` (issue 18).  No MLflow here: the MLflow pyfunc model
(``pipeline/pyfunc_model.py``) turns a :class:`RequestError` into HTTP 400 and anything else
into a 500 that says only "internal error" (the traceback stays in the server's log).

Input columns (one row per query): ``query`` and exactly one source of the video,

- ``video_bytes``: a video file's bytes, base64 (a string; raw bytes from Python too);
- ``features_bytes`` + ``duration``: an ``.npy`` file of ``[n, D]`` features (no pickle), base64;
- ``video``: a video file on the server, relative to ``predict.path_root``;
- ``features`` + ``video_id`` (+ ``duration``): a features file on the server, relative to
  ``predict.path_root``, in the checkpoint's ``dataset.feature_layout`` (a ``.npy`` file: ``[n, D]``
  + ``duration``).

Trust model (docs/ARCHITECTURE.md "The served model"):

- server files are off by default (``predict.path_root: null``); with a root, a path must be
  relative, without ``..``, and resolve (symlinks followed) to a file inside the root;
- every row is checked against the limits of params section ``predict`` (rows per request, ``top``,
  query bytes and words, file bytes, feature rows) before any row is decoded; the video's seconds
  and frames are checked from its header before decoding and again while decoding; one video is
  decoded at a time per server process (its frames are the largest allocation);
- an error names the row and the problem, never a server path (a last pass replaces any absolute
  path left in a message by ``<server path>``), and is at most :data:`MAX_MESSAGE` characters.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import re
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fian.predict import PredictError, Predictor, short

log = logging.getLogger("fian.serve")

MAX_MESSAGE = 600  # characters of an error message sent to a client
SOURCES = ("video_bytes", "features_bytes", "video", "features")
OUTPUT_COLUMNS = ("query_index", "rank", "start", "end", "score")
# an absolute path of two or more parts, not inside a word ("frames/s" is not one)
_ABS_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s'\"/,;()<>]+/)+[^\s'\",;()<>]*")


class RequestError(ValueError):
    """A bad request: ``row`` (0-based, None for the whole request) and the problem, cut to
    :data:`MAX_MESSAGE` characters."""

    def __init__(self, problem: str, row: int | None = None) -> None:
        text = f"row {row}: {problem}" if row is not None else problem
        if len(text) > MAX_MESSAGE:
            text = text[: MAX_MESSAGE - 12] + "... (cut)"
        super().__init__(text)
        self.row = row


def scrub(message: str, replacements: Mapping[str, str] = {}) -> str:  # noqa: B006 - read only
    """``message`` with each key of ``replacements`` replaced (longest first), then any absolute path."""
    for old in sorted(replacements, key=len, reverse=True):
        if old:
            message = message.replace(old, replacements[old])
    return _ABS_PATH.sub("<server path>", message)


@dataclass(frozen=True)
class Row:
    """One checked row: its query and its one source (a resolved server path or bytes)."""

    index: int
    query: str
    kind: str  # one of SOURCES
    value: Any  # Path or bytes
    name: str  # the source in messages, as the client gave it
    video_id: str | None
    duration: float | None


def _value(row: Mapping[str, Any], key: str) -> Any:
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None  # absent (pandas fills a missing cell with NaN or None)
    return v


class ServedModel:
    """A :class:`Predictor` behind the checks above; :meth:`answer` is the pyfunc ``predict``."""

    def __init__(self, predictor: Predictor, *, path_root: str | Path | None = None) -> None:
        self.predictor = predictor
        self.root = Path(path_root).resolve() if path_root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise PredictError(f"predict.path_root {path_root}: not a folder")
        # one video decoded at a time: MLflow's server runs requests in threads, a decoded video holds
        # up to predict.max_video_frames frames, and the predictor's cache is not thread-safe
        self._video_lock = threading.Lock()
        self._hide = {str(predictor.checkpoint.parent): "<model>", tempfile.gettempdir(): "<tmp>"}
        if self.root is not None:
            self._hide[f"{self.root}/"] = ""  # a file of the root is named as the client named it
            self._hide[str(self.root)] = "<root>"

    @classmethod
    def load(cls, checkpoint: str | Path, config: Mapping[str, Any] | None = None) -> ServedModel:
        """From a checkpoint and the model's config: ``device``, ``backbone_weights`` (the C3D/I3D
        file of the recipe, checked against its sha256 now, not at the first request) and
        ``predict`` (overrides of the checkpoint's params section ``predict``)."""
        config = dict(config or {})
        p = Predictor.from_checkpoint(
            checkpoint, device=config.get("device") or "cpu", backbone_weights=config.get("backbone_weights"),
            limits=config.get("predict"), label="the served model",
        )  # fmt: skip
        if p.recomputable and not p.random_weights:
            if p.backbone_weights is not None:
                p._get_backbone()  # a wrong file fails the server's start, not a client's request
            else:
                log.warning("%s: no backbone_weights in the model's config: video inputs are refused, features only",
                            checkpoint)  # fmt: skip
        return cls(p, path_root=p.limits.path_root)

    # -- one request ------------------------------------------------------------------------
    def answer(self, frame: Any, params: Mapping[str, Any] | None = None) -> Any:
        """``frame`` (a pandas DataFrame, one row per query) -> one row per window (OUTPUT_COLUMNS)."""
        import pandas as pd

        try:
            return self._answer(frame, dict(params or {}), pd)
        except PredictError as e:
            raise RequestError(scrub(str(e), self._hide)) from None

    def _answer(self, frame: Any, params: dict[str, Any], pd: Any) -> Any:
        p, lim = self.predictor, self.predictor.limits
        if not isinstance(frame, pd.DataFrame):
            raise RequestError(f"expected a table of rows, got {type(frame).__name__}")
        if len(frame) > lim.max_rows:
            raise RequestError(f"{len(frame)} rows, over the limit predict.max_rows = {lim.max_rows}")
        if len(frame) == 0:
            raise RequestError("no rows")
        if "query" not in frame.columns:
            raise RequestError("a 'query' column is required")
        try:
            top = p.check_top(params.get("top", 5))
        except PredictError as e:
            raise RequestError(f"param {e}") from None
        records = frame.to_dict("records")
        rows = [self._check(i, r) for i, r in enumerate(records)]  # every row, before any decoding
        encoded = [self._encode(r) for r in rows]
        out = []
        for r, v in zip(rows, encoded, strict=True):
            for rank, m in enumerate(self._run(r, lambda r=r, v=v: p.predict(r.query, v, top=top)), 1):
                out.append((r.index, rank, m.start, m.end, m.score))
        answer = pd.DataFrame(out, columns=list(OUTPUT_COLUMNS))
        return answer.astype({"query_index": "int64", "rank": "int64", "start": "float64", "end": "float64",
                              "score": "float64"})  # fmt: skip

    def _run(self, row: Row, fn: Any) -> Any:
        """``fn()``; a :class:`PredictError` becomes this row's :class:`RequestError`."""
        try:
            return fn()
        except PredictError as e:
            hide = {**self._hide, **({str(row.value): row.name} if isinstance(row.value, Path) else {})}
            raise RequestError(scrub(str(e), hide), row.index) from None

    def _check(self, i: int, rec: Mapping[str, Any]) -> Row:
        """The cheap checks of one row: types, one source, sizes, paths, the query."""
        p = self.predictor
        query = _value(rec, "query")
        if not isinstance(query, str):
            raise RequestError(f"'query' must be a string, got {short(query)}", i)
        given = {k: _value(rec, k) for k in SOURCES if _value(rec, k) is not None}
        if len(given) != 1:
            have = ", ".join(f"'{k}'" for k in given) or "none"
            raise RequestError(f"give exactly one of 'video_bytes', 'features_bytes', 'video', 'features' (got {have})", i)
        kind, value = next(iter(given.items()))
        vid, duration = _value(rec, "video_id"), _value(rec, "duration")
        if vid is not None and not isinstance(vid, str | int):
            raise RequestError(f"'video_id' must be a string, got {short(vid)}", i)
        if duration is not None:
            if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration) or duration <= 0:
                raise RequestError(f"'duration' must be a positive number of seconds, got {short(duration)}", i)
            duration = float(duration)
        if kind.endswith("_bytes"):
            value = self._bytes(i, kind, value)
            name = f"'{kind}' ({len(value)} bytes)"
        else:
            if not isinstance(value, str):
                raise RequestError(f"'{kind}' must be a path (a string), got {short(value)}", i)
            name = f"'{kind}' {short(value)}"
            value = self._resolve(i, kind, value, name)
            if kind == "video" or value.suffix == ".npy":  # a feature store holds many videos: its rows are checked
                size = value.stat().st_size
                self._run(Row(i, query, kind, value, name, None, None), lambda: p.check_file_size(size, name))
        npy = kind == "features_bytes" or (kind == "features" and value.suffix == ".npy")
        if npy and duration is None:
            raise RequestError(f"{name}: features of an .npy file need 'duration' (seconds)", i)
        if kind == "features" and not npy and vid is None:
            raise RequestError(f"{name}: 'features' needs a 'video_id'", i)
        if kind in ("video", "video_bytes") and not p.recomputable:
            raise RequestError(f"this model's features cannot be recomputed from a video ({p.recipe['reason']}): "
                               "send precomputed features ('features_bytes' + 'duration')", i)  # fmt: skip
        if kind in ("video", "video_bytes") and not p.random_weights and p.backbone_weights is None:
            raise RequestError("this server was started without the backbone weights of the model's features: "
                               "it takes precomputed features only ('features_bytes' + 'duration')", i)  # fmt: skip
        row = Row(i, query, kind, value, name, None if vid is None else str(vid), duration)
        self._run(row, lambda: p.encode_query(query))
        return row

    def _bytes(self, i: int, kind: str, value: Any) -> bytes:
        """A file's bytes: base64 text (size checked before decoding it) or bytes."""
        p = self.predictor
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
        elif isinstance(value, str):
            text = "".join(value.split())  # line breaks of wrapped base64
            self._run(Row(i, "", kind, b"", kind, None, None),
                      lambda: p.check_file_size(len(text) // 4 * 3, f"'{kind}' (base64 of about {len(text) // 4 * 3} bytes)"))  # fmt: skip
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(f"'{kind}': not valid base64 ({len(value)} characters)", i) from None
        else:
            raise RequestError(f"'{kind}' must be the file's bytes in base64, got {type(value).__name__}", i)
        self._run(Row(i, "", kind, data, kind, None, None), lambda: p.check_file_size(len(data), f"'{kind}' ({len(data)} bytes)"))
        return data

    def _resolve(self, i: int, kind: str, given: str, name: str) -> Path:
        """A server path: relative to the root, no ``..``, resolved inside the root, a file."""
        if self.root is None:
            raise RequestError(f"'{kind}' names a file on the server, and this server reads none (predict.path_root "
                               f"is null): send the file's bytes in '{kind.split('_')[0]}_bytes'", i)  # fmt: skip
        rel = Path(given)
        if not given or "\0" in given or rel.is_absolute() or ".." in rel.parts:
            raise RequestError(f"{name}: a path relative to the served folder, without '..'", i)
        full = (self.root / rel).resolve()
        if not full.is_relative_to(self.root):
            raise RequestError(f"{name}: leads outside the served folder", i)
        if not full.is_file():
            raise RequestError(f"{name}: no such file in the served folder", i)
        return full

    def _encode(self, row: Row) -> Any:
        """Decode one row's source (limits on seconds / frames / rows apply inside)."""
        p = self.predictor
        if row.kind == "video":
            with self._video_lock:
                return self._run(row, lambda: p.encode_video(row.value, name=row.name))
        if row.kind == "video_bytes":
            with self._video_lock, tempfile.TemporaryDirectory(prefix="fian-serve-") as tmp:
                path = Path(tmp) / "video"
                path.write_bytes(row.value)
                hidden = Row(row.index, row.query, row.kind, path, row.name, None, None)
                return self._run(hidden, lambda: p.encode_video(path, name=row.name))
        if row.kind == "features_bytes" or row.value.suffix == ".npy":
            return self._run(row, lambda: self._npy(row))
        return self._run(row, lambda: p.load_features(row.value, row.video_id, duration=row.duration))

    def _npy(self, row: Row) -> Any:
        """An .npy file's ``[n, D]`` features (bytes or a server file): header checked before the data."""
        p = self.predictor
        f = io.BytesIO(row.value) if isinstance(row.value, bytes) else open(row.value, "rb")  # noqa: SIM115
        with f:
            try:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f".npy format version {version}")
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
                p.check_feature_shape(shape, row.name)
                if dtype.kind not in "fiu":
                    raise PredictError(f"{row.name}: features must be numbers, got dtype {dtype}")
                f.seek(0)
                x = np.load(f, allow_pickle=False)
            except PredictError:
                raise
            except (ValueError, OSError, EOFError) as e:
                raise PredictError(f"{row.name}: not a readable .npy array of features: {e}") from None
        return p.encode_features(x, row.duration, name=row.name)
