"""A persistent cache of encoded videos for predict (issue 19 item 9): a second ``fian predict`` on
the same clip costs the model only, not the decode and the backbone again.

An entry is the backbone's rows of one video (``[n, D]`` float32, before the downsampling to
``features.num_steps``, which is cheap and redone) and its duration, in one ``.npz`` file (arrays
only: read with ``allow_pickle=False``) named by the sha256 of

    {"video": sha256 of the file's content, "recipe": the feature recipe minus what acts after
     the backbone (num_steps, shorter), "version": CACHE_VERSION}

so a copy of the clip under another name hits, and a model whose features were made differently
(another backbone, weights, fps, clip length, stride, crop, normalisation, random seed) misses.
The entry also stores that key and its shape is checked on read: a stray or damaged file is a
miss (and is removed), never an answer.

Many processes, one folder: entries are written atomically (:func:`fian.io.atomic_path`: temp
file + rename), so a reader sees a whole entry or none; two writers of one key write the same
bytes; a reader whose entry another process just evicted has it open or misses.  The folder is
capped at ``max_bytes``: after each write the least recently used entries (a hit touches its
file) are removed until the entries fit; temp files of dead writers are removed with them.
Default folder ``$FIAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fian/videos`` (``~/.cache/fian/videos``);
default cap ``$FIAN_CACHE_MAX_MB`` MiB, else :data:`DEFAULT_MAX_MB`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fian.io import TEMP_MARK, atomic_path, remove_stale_temps

log = logging.getLogger("fian.predict_cache")

CACHE_VERSION = 1
DEFAULT_MAX_MB = 2048
AFTER_BACKBONE = ("num_steps", "shorter")  # recipe entries that act after the cached rows
SUFFIX = ".npz"


def default_dir() -> Path:
    """``$FIAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fian/videos``, else ``~/.cache/fian/videos``."""
    if os.environ.get("FIAN_CACHE_DIR"):
        return Path(os.environ["FIAN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fian" / "videos"


def default_max_bytes() -> int:
    """``$FIAN_CACHE_MAX_MB`` MiB (a positive number), else :data:`DEFAULT_MAX_MB`."""
    raw = os.environ.get("FIAN_CACHE_MAX_MB")
    if raw is None:
        return DEFAULT_MAX_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise ValueError(f"FIAN_CACHE_MAX_MB={raw!r}: expected a positive number of MiB")
    return int(mb * (1 << 20))


def cache_key(video_sha256: str, recipe: Mapping[str, Any]) -> str:
    """The entry name of a video's rows under a feature recipe (see the module docstring)."""
    made = {k: v for k, v in recipe.items() if k not in AFTER_BACKBONE}
    text = json.dumps({"video": video_sha256, "recipe": made, "version": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class VideoCache:
    """The cache folder ``folder``, capped at ``max_bytes`` (see the module docstring)."""

    def __init__(self, folder: str | Path | None = None, max_bytes: int | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_dir()
        self.max_bytes = int(max_bytes) if max_bytes is not None else default_max_bytes()
        if self.max_bytes <= 0:
            raise ValueError(f"cache size cap must be positive, got {self.max_bytes} bytes")

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def get(self, video_sha256: str, recipe: Mapping[str, Any], feature_dim: int) -> tuple[np.ndarray, float] | None:
        """``(rows [n, feature_dim] float32, duration s)`` of the video under ``recipe``, or None."""
        key = cache_key(video_sha256, recipe)
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                stored, rows, duration = str(z["key"]), np.array(z["rows"]), float(z["duration"])
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            log.warning("%s: unreadable cache entry (%s): removed", path, e)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        if stored != key or rows.dtype != np.float32 or rows.ndim != 2 or rows.shape[1] != feature_dim or not rows.shape[0]:
            log.warning("%s: cache entry does not match its name (key, dtype or shape %s): removed", path, rows.shape)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        return rows, duration

    def put(self, video_sha256: str, recipe: Mapping[str, Any], rows: np.ndarray, duration: float) -> Path | None:
        """Store a video's rows (atomically), then evict down to the cap.  An entry larger than the
        whole cap is not stored (None); nor is one the folder cannot take (not writable, disk full:
        a warning, the prediction goes on without the cache)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.nbytes > self.max_bytes:
            log.info("video rows of %.1f MiB exceed the cache cap of %.1f MiB: not cached", rows.nbytes / 2**20,
                     self.max_bytes / 2**20)  # fmt: skip
            return None
        key = cache_key(video_sha256, recipe)
        path = self.path(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, suffix=SUFFIX) as tmp, open(tmp, "wb") as f:
                np.savez(f, key=np.array(key), rows=rows, duration=np.array(float(duration)))
            self.evict(keep=path)
        except OSError as e:
            log.warning("video cache %s: cannot store an entry (%s): going on without it", self.folder, e)
            return None
        return path

    def entries(self) -> list[tuple[Path, float, int]]:
        """``(file, last use, bytes)`` of every entry, least recently used first."""
        found = []
        for p in self.folder.glob(f"*{SUFFIX}") if self.folder.is_dir() else []:
            if TEMP_MARK in p.name:
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            found.append((p, st.st_mtime, st.st_size))
        return sorted(found, key=lambda e: (e[1], e[0].name))

    def size(self) -> int:
        return sum(b for _, _, b in self.entries())

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used entries until the rest fit in the cap (``keep``, the entry
        just written, goes last), and the temps of writers that died; return the removed entries."""
        for p in self.folder.glob(f".*{TEMP_MARK}*") if self.folder.is_dir() else []:
            target = self.folder / p.name[1 : p.name.index(TEMP_MARK)]
            remove_stale_temps(target, SUFFIX)
        entries = self.entries()
        total = sum(b for _, _, b in entries)
        removed = []
        for p, _, size in sorted(entries, key=lambda e: e[0] == keep):  # stable: LRU order, keep last
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):  # another process evicted it first
                p.unlink()
                removed.append(p)
            total -= size
        return removed
