"""MLflow observes the runs; it never decides anything.

:class:`Tracker` wraps one MLflow run.  ``mlflow`` is imported lazily, inside the methods, so
that ``fian`` imports (and trains) on a machine without it (the GPU machine).  When tracking is
disabled every method is a no-op and the constructor says so once in the log.

Conventions:

- tracking URI: ``tracking.tracking_uri`` from params (default ``sqlite:///mlflow.db``), unless the
  ``MLFLOW_TRACKING_URI`` environment variable is set, which wins;
- one experiment per dataset (``fian/<dataset>``), run name ``<dataset>/<variant>/<stage>``;
- params once (``Config.flat()``), metrics with ``step = epoch``, artifacts (predictions, resolved
  config, history, checkpoint);
- tags: ``git_commit`` (``git rev-parse HEAD``, "unknown" outside git), ``dataset``, ``variant``,
  ``stage``, and ``data_sha256.<file name>`` for every input file of the stage.

MLflow metric names may not contain ``@``, ``,`` or ``=``: :func:`metric_key` maps our names
(``R@1,IoU=0.5``) to ``R1_IoU0.5``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from fian.io import sha256_file

log = logging.getLogger("fian.tracking")

_METRIC_RE = re.compile(r"^R@(\d+),IoU=([0-9.]+)$")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_key(name: str) -> str:
    """Our metric name -> an MLflow-legal one: ``R@1,IoU=0.5`` -> ``R1_IoU0.5``, ``val/mIoU`` kept."""
    prefix, _, last = name.rpartition("/")
    m = _METRIC_RE.match(last)
    last = f"R{m.group(1)}_IoU{m.group(2)}" if m else _BAD_CHARS.sub("_", last)
    return f"{_BAD_CHARS.sub('_', prefix)}/{last}" if prefix else last


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of ``cwd`` (default: the current folder), or "unknown" outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"




def data_hashes(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{"data_sha256.<name>": sha256}`` for every file in ``paths`` (folders: their files, sorted)."""
    tags: dict[str, str] = {}
    for p in paths:
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            name = f.relative_to(p.parent).as_posix()
            tags[f"data_sha256.{name}"] = sha256_file(f)
    return tags


def resolve_uri(configured: str) -> str:
    """The tracking URI: ``MLFLOW_TRACKING_URI`` if set, else the one from params."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


class Tracker:
    """One MLflow run (or nothing, when ``enabled`` is false).

    Use as a context manager; an exception inside the block ends the run as FAILED
    (``KeyboardInterrupt``: KILLED).
    """

    def __init__(
        self,
        *,
        enabled: bool,
        tracking_uri: str,
        dataset: str,
        variant: str,
        stage: str,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.enabled = enabled
        self.uri = resolve_uri(tracking_uri)
        self.experiment = f"fian/{dataset}"
        self.run_name = f"{dataset}/{variant}/{stage}"
        self.tags = {"dataset": dataset, "variant": variant, "stage": stage, **(tags or {})}
        self.run_id: str | None = None
        self._mlflow: Any = None
        if not enabled:
            log.info("MLflow tracking is off (tracking.enabled: false): %s is not logged", self.run_name)

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        import mlflow  # lazy: the GPU machine has no mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.experiment)
        tags = {"git_commit": git_commit(), **self.tags}
        run = mlflow.start_run(run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        log.info("MLflow run %s (%s) at %s", self.run_name, self.run_id, self.uri)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._mlflow is not None:
            if exc_type is None:
                status = "FINISHED"
            else:  # Ctrl-C or SIGTERM (the stages turn it into KeyboardInterrupt): KILLED
                status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            self._mlflow.end_run(status=status)
            self._mlflow = None

    # -- logging --------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params once per run (``Config.flat()``); values are stringified (tuples, None)."""
        if self._mlflow is None:
            return
        self._mlflow.log_params({k: str(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self._mlflow is None:
            return
        self._mlflow.set_tags(dict(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Finite numeric metrics, names mapped by :func:`metric_key`; ``step`` = epoch."""
        if self._mlflow is None:
            return
        clean = {
            metric_key(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
        }
        self._mlflow.log_metrics(clean, step=step)

    def end_stale_runs(self, tags: Mapping[str, str]) -> list[str]:
        """Mark KILLED every other RUNNING run of this experiment carrying ``tags``; return their ids.

        For runs whose process died without ending them (SIGKILL, node loss): call it only while
        holding what makes them stale (the train stage holds its state folder's lock).
        """
        if self._mlflow is None:
            return []
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = client.search_runs([exp.experiment_id], filter_string=f"{where} and attributes.status = 'RUNNING'")
        ended = []
        for r in runs:
            if r.info.run_id == self.run_id:
                continue
            client.set_tag(r.info.run_id, "fian.ended_by", f"run {self.run_id}: found RUNNING, its process had died")
            client.set_terminated(r.info.run_id, status="KILLED")
            log.warning("MLflow run %s was left RUNNING by a killed process: marked KILLED", r.info.run_id)
            ended.append(r.info.run_id)
        return ended

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        if self._mlflow is None:
            return
        self._mlflow.log_artifact(str(path), artifact_path=subdir)


def build_tracker(
    cfg: Any,
    *,
    stage: str,
    inputs: Iterable[str | Path] = (),
    hashes: Mapping[str, str] | None = None,
    active: bool = True,
    tags: Mapping[str, str] | None = None,
) -> Tracker:
    """The :class:`Tracker` of a stage from ``cfg`` (a :class:`fian.config.Config`).

    ``inputs``: the stage's input files, hashed into ``data_sha256.*`` tags (only when tracking);
    ``hashes``: those tags already computed (:func:`data_hashes`), instead of ``inputs``.
    ``active``: false on DDP ranks other than 0 (they log nothing).
    """
    enabled = cfg.tracking.enabled and active
    all_tags = dict(tags or {})
    if enabled:
        all_tags.update(hashes if hashes is not None else data_hashes(inputs))
    return Tracker(
        enabled=enabled,
        tracking_uri=cfg.tracking.tracking_uri,
        dataset=cfg.dataset.name,
        variant=cfg.variant,
        stage=stage,
        tags=all_tags,
    )
