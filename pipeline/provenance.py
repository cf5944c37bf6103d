"""Where a result came from: the ``"provenance"`` entry the train and evaluate stages write into
``train_info.json`` / ``info_<split>.json`` (text files beside DVC's numbers-only metrics files).

The tables stage gathers these entries into one provenance file per table (``reports/table<k>.provenance.json``,
fian/reports/tables.py): for every "(ours)" cell the MLflow runs, the code commit and its dirty
flag, the sha256 of the feature and word-vector files the model read with their sources, the
seed, the device kind and count, the effective batch size and the evaluation protocol.
Nothing here decides anything; it only records.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("fian.provenance")


def clean_uri(uri: str) -> str:
    """A tracking URI without user name or password (``http://u:p@host`` -> ``http://host``)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def mlflow_ref(tracker: Any) -> dict[str, str] | None:
    """``{"run_id", "experiment", "tracking_uri"}`` of a :class:`fian.tracking.Tracker`'s run, or
    None when tracking is off (``tracking.enabled: false``; a DDP rank other than 0)."""
    if tracker is None or getattr(tracker, "run_id", None) is None:
        return None
    return {"run_id": tracker.run_id, "experiment": tracker.experiment, "tracking_uri": clean_uri(tracker.uri)}


def device_info(device: Any, world_size: int = 1) -> dict[str, Any]:
    """``{"kind": "cuda"|"cpu", "name": ..., "count": processes, "threads": torch's intra-op threads}``:
    the device a job ran on (the thread count changes a CPU result's last bits)."""
    import torch

    kind = getattr(device, "type", str(device))
    name = kind
    if kind == "cuda":
        try:
            name = torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError):  # no driver at this moment: the kind is still right
            name = "cuda"
    return {"kind": kind, "name": name, "count": int(world_size), "threads": int(torch.get_num_threads())}


def sources(cfg: Any, text_dir: str | Path, split_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The sources of the features and word vectors a run read: the feature store's release file
    (``source`` attr: layout and file name), its backbone and tags, the sha256 params pin for each
    released file (null: not pinned upstream); the word-vector file named by the text stage's
    ``coverage.json`` in ``text_dir``, whether it is the offline fallback, and GloVe's pinned sha256."""
    cov_path = Path(text_dir) / "coverage.json"
    try:
        cov = json.loads(cov_path.read_text())
    except (OSError, ValueError):
        log.warning("%s: not readable: the word-vector source is not recorded", cov_path)
        cov = {}
    glove = cfg.text.glove
    return {
        "features": {
            "source": str(split_attrs.get("feature_source", "")),
            "backbone": str(split_attrs.get("backbone", "")),
            "random_weights": bool(split_attrs.get("random_weights", False)),
            "synthetic": bool(split_attrs.get("synthetic", False)),
            "release_sha256": {s.name: s.sha256 for s in cfg.dataset.feature_sources},
        },
        "word_vectors": {
            "source": cov.get("glove"),
            "fallback": cov.get("fallback"),
            "own_file": cfg.text.vectors_file,
            "glove_sha256_pinned": glove.sha256 if glove is not None and not cfg.text.vectors_file else None,
        },
    }


def git_state() -> dict[str, str]:
    """``{"git_commit", "git_dirty"}`` of the code that runs, as the MLflow tags record them."""
    from fian.tracking import git_commit, git_dirty

    return {"git_commit": git_commit(), "git_dirty": git_dirty()}


def strip_prefix(hashes: Mapping[str, str]) -> dict[str, str]:
    """``{"data_sha256.train.h5": h}`` (fian.tracking.data_hashes) -> ``{"train.h5": h}``."""
    return {k.removeprefix("data_sha256."): v for k, v in sorted(hashes.items())}
