"""Resumable training state that a workflow's reruns find again (issue 12 item 2).

Snakemake deletes the outputs of a failed job and DVC removes a stage's outputs before it reruns
it, so the in-progress state of a training run cannot live among the outputs.  It lives in a
*state folder* given on the command line (``--state state/train/<dataset>/<variant>``, not a
declared output of either tool), one file per **run key**:

    <state>/<key>.pt            the live state: the checkpoint after the last completed epoch
    <state>/<key>.epoch<N>.pt   a state set aside when a run asked for fewer epochs than it held
    <state>/<key>.json          what the key was made of (for people; never read back)
    <state>/.lock               held (flock) by the one job that uses the folder

The key is a hash of everything that determines the result except ``train.epochs``: the resolved
config (without ``train.epochs`` and the ``tracking`` section, which only observes), the sha256 of
every input file, and :func:`code_version` (the source of the modules that train and validate,
and the torch version).  A changed config, data file or training code therefore never resumes a
stale state; raising only ``train.epochs`` finds the finished run's state and continues it.

Choosing where to start (:meth:`TrainState.prepare`): among the states of this key (and the
output checkpoint when it carries the same key) the one with the most epochs not above
``train.epochs``; none: a fresh start.  A state holding more epochs than asked is renamed to
``<key>.epoch<N>.pt`` first, so no later checkpoint is ever overwritten.  ``restart=True`` deletes
this key's states and starts fresh.

This module knows nothing of MLflow (the stage links the attempts' runs); it stores plain
metadata in the checkpoint through :func:`fian.train.fit`'s ``extra``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from fian.io import TEMP_MARK, write_json
from fian.train import UnsafeCheckpointError, load_checkpoint

log = logging.getLogger("fian.resume")

META = "resume"  # the checkpoint entry that holds {"key", "attempt", "run_id", ...}

# the modules whose source determines a training run's numbers (initialisation, steps, validation)
CODE_MODULES = (
    "train.py", "losses.py", "evaluate.py", "inference.py", "metrics.py", "distributed.py",
    "model", "data/dataset.py", "data/batch.py",
)  # fmt: skip


class StateBusyError(RuntimeError):
    """Another process holds the state folder's lock."""


def code_version(root: str | Path | None = None) -> str:
    """sha256 over the source of :data:`CODE_MODULES` (under ``fian/``) and ``torch.__version__``."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    h = hashlib.sha256(f"torch {torch.__version__}\n".encode())
    for name in CODE_MODULES:
        p = root / name
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


def key_material(config: Mapping[str, Any], data: Mapping[str, str], code: str) -> dict[str, Any]:
    """What the run key hashes: config without ``train.epochs`` / ``tracking``, data hashes, code."""
    cfg = json.loads(json.dumps(dict(config)))  # deep copy, tuples -> lists
    cfg.get("train", {}).pop("epochs", None)
    cfg.pop("tracking", None)
    return {"config": cfg, "data": dict(sorted(data.items())), "code": code}


def run_key(config: Mapping[str, Any], data: Mapping[str, str], code: str) -> str:
    """The run key (24 hex digits) of :func:`key_material`."""
    blob = json.dumps(key_material(config, data, code), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class TrainState:
    """The state folder of one training job, locked for as long as the object is open."""

    def __init__(self, folder: str | Path, key: str) -> None:
        self.folder = Path(folder)
        self.key = key
        self._lock: int | None = None

    @property
    def live(self) -> Path:
        return self.folder / f"{self.key}.pt"

    # -- lock ---------------------------------------------------------------------------------
    def __enter__(self) -> TrainState:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise StateBusyError(
                    f"{self.folder}: another training job uses this state folder ({holder}); "
                    "wait for it to end (or stop it) and run again"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        self._lock = fd
        self._remove_temps()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def _remove_temps(self) -> None:
        """Temp files of killed writers (:data:`fian.io.TEMP_MARK` in the name), of any run key:
        stale, since we hold the folder's lock (a run killed before the code or data changed left
        its temp under its own, old key)."""
        for e in os.scandir(self.folder):
            if TEMP_MARK in e.name and e.is_file(follow_symlinks=False):
                log.info("removing %s (left by a killed writer)", e.path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)

    # -- candidates -----------------------------------------------------------------------------
    def states(self) -> list[Path]:
        """This key's state files: the live one and those set aside (by name, no temp files)."""
        aside = re.compile(rf"^{re.escape(self.key)}\.epoch(\d+)\.pt$")
        found = [p for p in self.folder.iterdir() if aside.match(p.name)] if self.folder.is_dir() else []
        return ([self.live] if self.live.is_file() else []) + sorted(found, key=lambda p: int(aside.match(p.name)[1]))

    def prepare(
        self,
        epochs: int,
        *,
        also: Iterable[str | Path] = (),
        restart: bool = False,
        describe: Mapping[str, Any] | None = None,
    ) -> tuple[Path, dict[str, Any]] | None:
        """Choose the checkpoint to start from (path, loaded dict) or None for a fresh start.

        ``also``: other checkpoints that may hold this run (the stage's output checkpoint); used
        only when their stored key is this key.  ``describe``: written to ``<key>.json``.
        Requires the lock (use inside ``with``).
        """
        assert self._lock is not None, "prepare() needs the lock: use `with TrainState(...)`"
        if describe is not None:
            write_json(self.folder / f"{self.key}.json", dict(describe))
        if restart:
            for p in self.states():
                log.warning("--restart: deleting the training state %s", p)
                p.unlink()
            log.info("--restart: run %s starting from epoch 0", self.key)
            return None
        best: tuple[Path, dict[str, Any]] | None = None
        live_epoch: int | None = None
        own = self.states()
        for p in [*own, *(Path(a) for a in also)]:
            if not p.is_file():
                continue
            try:
                ckpt = load_checkpoint(p)  # weights_only: a crafted file raises UnsafeCheckpointError, never runs
            except UnsafeCheckpointError:
                raise
            except ValueError as e:
                if p in own:
                    raise
                log.warning("%s will be replaced when this run ends (%s)", p, e)
                continue
            stored = (ckpt.get(META) or {}).get("key")
            if stored != self.key:
                if p in own:
                    raise ValueError(f"{p}: holds run {stored!r}, not {self.key!r} as its name says")
                log.warning("%s holds another run (key %s; this run is %s): it will be replaced when this run ends",
                            p, stored, self.key)  # fmt: skip
                continue
            done = int(ckpt["epoch"])
            if p == self.live:
                live_epoch = done
            if done <= epochs and (best is None or done > int(best[1]["epoch"])):
                best = (p, ckpt)
        if live_epoch is not None and live_epoch > epochs:
            aside = self.folder / f"{self.key}.epoch{live_epoch}.pt"
            log.warning("%s holds %d epochs, more than train.epochs=%d: kept as %s", self.live, live_epoch, epochs, aside)
            os.replace(self.live, aside)
        if best is None:
            log.info("no training state of run %s in %s: starting from epoch 0", self.key, self.folder)
        else:
            log.info("resuming run %s from %s after epoch %d", self.key, best[0], int(best[1]["epoch"]))
        return best
