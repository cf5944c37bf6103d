"""MLflow observes the runs; it never decides anything.

:class:`Tracker` wraps one MLflow run.  ``mlflow`` is imported lazily, inside the methods, so
that ``fian`` imports (and trains) on a machine without it (the GPU machine).  When tracking is
disabled every method is a no-op and the constructor says so once in the log.

Conventions (docs/TRAINING.md "MLflow"):

- tracking URI: ``tracking.tracking_uri`` from params (default ``sqlite:///mlflow.db``), unless the
  ``MLFLOW_TRACKING_URI`` environment variable is set, which wins (on a cluster: an
  ``mlflow server`` the jobs reach over HTTP, docs/PIPELINE.md);
- one experiment per dataset (``fian/<dataset>``), tagged ``mlflow.experimentKind =
  custom_model_development`` (read by earlier MLflow 3 UIs; the UI of MLflow 3.17 ignores it and
  opens the view of its own "GenAI | Model training" switch: :func:`ui_runs_url` is the link that
  lands on the runs, docs/TRAINING.md "MLflow");
- run name ``<dataset>/<variant>/<stage>[:<split>][ seed <N>] <UTC time>-<4 hex>``: readable, never
  repeated (the seed for one seed's job of a config with ``seeds:``); tags ``seed`` (the run's
  ``train.seed``) and ``fian.group`` (``<dataset>/<variant>/<stage>[:<split>]``, the same for every
  seed of a variant: the UI's "Group by" tag puts the seeds side by side);
- a workflow invocation (``FIAN_WORKFLOW_RUN`` set, by the Snakefile) gets a parent run per
  experiment, tagged ``fian.workflow_run``; each job's run is its child (``mlflow.parentRunId``).
  The parent is RUNNING while a job of it runs and ends FINISHED when all its jobs finished
  (KILLED / FAILED when one of them did);
- params once (``Config.flat()``), metrics with ``step = epoch``, artifacts, and the input
  datasets (``log_input``: name ``<dataset>/<split>``, digest and annotation/feature sha256 tags);
- tags: ``git_commit`` (``git rev-parse HEAD``, "unknown" outside git), ``git_dirty``
  ("true" when tracked files differ from HEAD), ``dataset``, ``variant``, ``stage``,
  ``fian.job`` / ``fian.project`` (which job of which project folder), and
  ``data_sha256.<file name>`` for every input file of the stage.

Many jobs, one store: a ``sqlite:`` store is created and migrated once, under a file lock
(``<db>.lock``), before any run is logged, and experiments are created under that lock too;
every call that writes retries while SQLite says "database is locked".  A run left RUNNING by a
process that died (SIGKILL, node loss) is marked KILLED by the next run of the same job in the
same project folder (Snakemake and DVC never run one job twice at once); a parent run left RUNNING
by a killed workflow invocation, with no job left running under it, is ended by the next job of
the same project folder (:meth:`Tracker.end_orphan_parents`).

MLflow metric names may not contain ``@``, ``,`` or ``=``: :func:`metric_key` maps our names
(``R@1,IoU=0.5``) to ``R1_IoU0.5``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import random
import re
import secrets
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from fian.io import sha256_file

log = logging.getLogger("fian.tracking")

_METRIC_RE = re.compile(r"^(d?)R@(\d+),IoU=([0-9.]+)$")  # R@n,IoU=m and the discounted dR@n,IoU=m
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")
WORKFLOW_ENV = "FIAN_WORKFLOW_RUN"  # one id per workflow invocation (the Snakefile sets it)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # earlier MLflow 3 UIs: the runs view
# MLflow 3.17's UI takes the view from its "GenAI | Model training" switch (browser localStorage
# "mlflow.workflowType_v1", default GenAI) or from this query parameter of the page's URL
UI_RUNS_QUERY = "workflowType=machine_learning"
RETRY_S = 120.0  # how long a write keeps retrying on "database is locked"
SUPPRESS_URL_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"  # MLflow's own print of the run URL (with the URI's password)
T = TypeVar("T")


def metric_key(name: str) -> str:
    """Our metric name -> an MLflow-legal one: ``R@1,IoU=0.5`` -> ``R1_IoU0.5``, ``dR@1,IoU=0.5`` ->
    ``dR1_IoU0.5``, ``val/mIoU`` kept."""
    prefix, _, last = name.rpartition("/")
    m = _METRIC_RE.match(last)
    last = f"{m.group(1)}R{m.group(2)}_IoU{m.group(3)}" if m else _BAD_CHARS.sub("_", last)
    return f"{_BAD_CHARS.sub('_', prefix)}/{last}" if prefix else last


def _git(args: list[str], cwd: str | Path | None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of ``cwd`` (default: the current folder), or "unknown" outside git."""
    out = (_git(["rev-parse", "HEAD"], cwd) or "").strip()
    return out or "unknown"


def git_dirty(cwd: str | Path | None = None) -> str:
    """"true" when tracked files differ from HEAD (``git status --porcelain -uno``), "false", or
    "unknown" outside git."""
    out = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return "unknown" if out is None else str(bool(out.strip())).lower()


def data_hashes(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{"data_sha256.<name>": sha256}`` for every file in ``paths`` (folders: their files, sorted;
    a killed writer's temp file, :data:`fian.io.TEMP_MARK` in its name, is not data and is skipped)."""
    from fian.io import TEMP_MARK

    tags: dict[str, str] = {}
    for p in paths:
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file() and TEMP_MARK not in q.name) if p.is_dir() else [p]
        for f in files:
            name = f.relative_to(p.parent).as_posix()
            tags[f"data_sha256.{name}"] = sha256_file(f)
    return tags


# credentials in a URI: the userinfo of scheme://user:password@host (up to the LAST @ before the
# path, as URL parsers split it) and secret-looking query values (?token=..., &sig=...)
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^/\s@]*(?:@[^/\s@]*)*)@(?=[^/\s@]*(?:[/?#\s]|$))")
_SECRET_QUERY = re.compile(r"([?&;](?:access_token|token|password|passwd|pwd|secret|api_key|apikey|key|sig|signature|"
                           r"auth|authorization|credential|x-amz-signature|x-amz-credential|x-amz-security-token)=)"
                           r"[^&;#\s\"']+", re.IGNORECASE)
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***``:
    ``http://user:token@host`` -> ``http://user:***@host``, ``http://token@host`` ->
    ``http://***@host``, ``?token=abc`` -> ``?token=***``.  Used wherever a URI may be printed or
    logged (the stage logs, MLflow params, error messages): a tracking server's password must not
    land in every job's log."""
    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m[2].partition(":")
        return f"{m[1]}{user}:{REDACTED}@" if sep else f"{m[1]}{REDACTED}@"

    return _SECRET_QUERY.sub(rf"\g<1>{REDACTED}", _USERINFO.sub(userinfo, text))


class RedactingFormatter(logging.Formatter):
    """Formats as ``inner`` does (message, traceback, stack), then :func:`redact` s the text."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def redact_handlers(logger: logging.Logger) -> None:
    """Wrap the formatter of each of ``logger``'s handlers in a :class:`RedactingFormatter` (once)."""
    for h in logger.handlers:
        if not isinstance(h.formatter, RedactingFormatter):
            h.setFormatter(RedactingFormatter(h.formatter))
def ui_runs_url(ui: str, experiment_id: str | None = None) -> str:
    """The link of the MLflow UI at ``ui`` (e.g. ``http://127.0.0.1:5000``) that opens the runs table
    of an experiment (without an id: the experiments list) in the model-training view, even in a
    browser that never opened MLflow (a plain link lands on MLflow 3's GenAI overview)."""
    page = f"experiments/{experiment_id}/runs" if experiment_id is not None else "experiments"
    return f"{ui.rstrip('/')}/#/{page}?{UI_RUNS_QUERY}"


def _plain(v: Any) -> Any:
    """Tuples -> lists, recursively (JSON has no tuple)."""
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def param_value(v: Any) -> str:
    """An MLflow param value: lists, tuples and mappings as JSON (``[4, 8, 16, 32]``, ``["qv", "vq"]``,
    not Python's ``(4, 8, 16, 32)``), anything else as ``str(v)`` (``0.0004``, ``True``, ``None``)."""
    if isinstance(v, tuple | list | Mapping):
        return json.dumps(_plain(v), default=str)
    return str(v)


def resolve_uri(configured: str) -> str:
    """The tracking URI: ``MLFLOW_TRACKING_URI`` if set, else the one from params."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


# ---------------------------------------------------------------------------------------------
# many processes, one store
# ---------------------------------------------------------------------------------------------


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///rel`` or ``sqlite:////abs`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(uri: str, timeout_s: float = 600.0) -> Iterator[None]:
    """An exclusive lock on ``<db>.lock`` beside a SQLite store (other URIs: nothing to lock)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{db}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{db}.lock: not acquired in {timeout_s:.0f} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _transient(e: BaseException) -> bool:
    text = str(e).lower()
    return "database is locked" in text or "database table is locked" in text


def retry(fn: Callable[[], T], what: str, timeout_s: float = RETRY_S) -> T:
    """``fn()``, again (jittered backoff) while the store says it is locked, for ``timeout_s``."""
    deadline, delay = time.monotonic() + timeout_s, 0.05
    while True:
        try:
            return fn()
        except Exception as e:
            if not _transient(e) or time.monotonic() > deadline:
                raise
            log.debug("%s: store locked, retrying in %.2f s", what, delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


_READY: set[str] = set()


def prepare_store(uri: str) -> None:
    """Create and migrate a SQLite store once, under :func:`store_lock` (no-op when done, or not SQLite).

    MLflow creates and migrates a SQLite schema when a process first opens it; several processes
    doing that at once on a fresh file break it ("table ... already exists").  Here one process does
    it while the others wait on the lock, then find the schema in place.
    """
    if uri in _READY or sqlite_path(uri) is None:
        return
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        retry(lambda: MlflowClient(uri).search_experiments(max_results=1), "open the store")
    _READY.add(uri)


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


class Tracker:
    """One MLflow run (or nothing, when ``enabled`` is false).

    Use as a context manager; an exception inside the block ends the run as FAILED
    (``KeyboardInterrupt``: KILLED).  ``split``: the split an evaluation scores (in the run name).
    ``parent``: the workflow invocation id (default ``$FIAN_WORKFLOW_RUN``; None: no parent run).
    """

    def __init__(
        self,
        *,
        enabled: bool,
        tracking_uri: str,
        dataset: str,
        variant: str,
        stage: str,
        split: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent: str | None = None,
        out: str | Path | None = None,
        seed: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.uri = resolve_uri(tracking_uri)
        self.experiment = f"fian/{dataset}"
        group = f"{dataset}/{variant}/{stage}" + (f":{split}" if split else "")
        self.job = group + (f" seed {seed}" if seed is not None else "")
        self.run_name = f"{self.job} {_utc_stamp()}-{secrets.token_hex(2)}"
        self.workflow = parent if parent is not None else os.environ.get(WORKFLOW_ENV) or None
        self.tags = {"dataset": dataset, "variant": variant, "stage": stage, "fian.group": group,
                     **({"seed": str(seed)} if seed is not None else {}), **(tags or {})}  # fmt: skip
        self.out = str(Path(out).resolve()) if out is not None else None
        self.run_id: str | None = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._mlflow: Any = None
        self._client: Any = None
        self._env_uri: str | None = None
        self._env_suppress: str | None | bool = False  # False: not changed by us
        if not enabled:
            log.info("MLflow tracking is off (tracking.enabled: false): %s is not logged", self.job)

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        import mlflow  # lazy: the GPU machine has no mlflow
        from mlflow.tracking import MlflowClient

        prepare_store(self.uri)
        redact_handlers(logging.getLogger("mlflow"))  # MLflow's own handler (it does not propagate)
        if redact(self.uri) != self.uri:  # MLflow prints "View run <name> at: <the URI>/#/..." on stdout
            self._env_suppress = os.environ.get(SUPPRESS_URL_ENV)
            os.environ[SUPPRESS_URL_ENV] = "true"
        self._mlflow = mlflow
        # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI in os.environ, which would then win
        # over the configured URI of every later Tracker of this process: put it back on exit
        self._env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        self._client = MlflowClient(self.uri)
        tags = {
            "git_commit": git_commit(),
            "git_dirty": git_dirty(),
            "fian.job": self.job,
            "fian.project": str(Path.cwd().resolve()),
            **({"fian.out": self.out} if self.out else {}),
            **self.tags,
        }
        # experiments and parent runs: created once, whoever comes first; a new parent and its first
        # child are started under one lock, so that no other job sees a parent without a child
        # (which, below, means "its invocation died in between")
        with store_lock(self.uri):
            self.experiment_id = retry(self._experiment, "set the experiment")
            if self.workflow:
                self.parent_run_id = retry(self._parent, "find the parent run")
                tags.update({"mlflow.parentRunId": self.parent_run_id, "fian.workflow_run": self.workflow})
            run = retry(lambda: mlflow.start_run(experiment_id=self.experiment_id, run_name=self.run_name,
                                                 tags=tags), "start the run")  # fmt: skip
        self.run_id = run.info.run_id
        log.info("MLflow run %s (%s) at %s", self.run_name, self.run_id, redact(self.uri))
        same_job = {"fian.job": self.job, **({"fian.out": self.out} if self.out else {"fian.project": tags["fian.project"]})}
        self.end_stale_runs(same_job)
        with store_lock(self.uri):
            retry(lambda: self.end_orphan_parents(tags["fian.project"]), "end the parent runs of dead invocations")
        return self

    def _experiment(self) -> str:
        """This dataset's experiment: found, or created.  On a server there is no store lock: two
        jobs may both find none and both create it; the second gets RESOURCE_ALREADY_EXISTS and
        uses the one the first created."""
        from mlflow.exceptions import MlflowException

        client = self._client
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                exp = client.get_experiment(client.create_experiment(self.experiment))
            except MlflowException as e:
                raced = e.error_code == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(e)
                exp = client.get_experiment_by_name(self.experiment) if raced else None
                if exp is None:
                    raise
                log.info("experiment %s was created by another job at the same moment: using it", self.experiment)
        if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            try:
                client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
            except MlflowException:
                # another job set it at the same moment (an MLflow server on SQLite answers the
                # second insert with a UNIQUE constraint error): fine if the tag is there now
                if client.get_experiment(exp.experiment_id).tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                    raise
                log.info("experiment %s: its kind tag was set by another job at the same moment", self.experiment)
        return exp.experiment_id

    def _parent(self) -> str:
        """The parent run of this workflow invocation in this experiment: found, or created."""
        client = self._client
        found = client.search_runs(
            [self.experiment_id], f"tags.`fian.workflow_run` = '{self.workflow}' and tags.`fian.kind` = 'workflow'",
            order_by=["attributes.start_time ASC"], max_results=10,
        )  # fmt: skip
        if found:  # on a server (no lock) two jobs may both create one: all pick the oldest
            run = found[0]
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        name = f"workflow {self.workflow}"  # the Snakefile's id: UTC start time and 8 hex digits
        tags = {"fian.kind": "workflow", "fian.workflow_run": self.workflow, "git_commit": git_commit(),
                "git_dirty": git_dirty(), "fian.project": str(Path.cwd().resolve())}  # fmt: skip
        return client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._mlflow is not None:
            if exc_type is None:
                status = "FINISHED"
            else:  # Ctrl-C or SIGTERM (the stages turn it into KeyboardInterrupt): KILLED
                status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            mlflow, self._mlflow = self._mlflow, None
            try:
                retry(lambda: mlflow.end_run(status=status), "end the run")
                if self.parent_run_id:
                    with store_lock(self.uri):
                        retry(lambda: self._settle(self.parent_run_id), "settle the parent run")
            finally:
                if self._env_uri is None:
                    os.environ.pop("MLFLOW_TRACKING_URI", None)
                else:
                    os.environ["MLFLOW_TRACKING_URI"] = self._env_uri
                if self._env_suppress is not False:
                    if self._env_suppress is None:
                        os.environ.pop(SUPPRESS_URL_ENV, None)
                    else:
                        os.environ[SUPPRESS_URL_ENV] = str(self._env_suppress)
                    self._env_suppress = False

    def _settle(self, parent_id: str, experiment_id: str | None = None, orphan: bool = False) -> str | None:
        """End the parent run when none of its jobs runs any more: FINISHED, or the worst status.

        A parent without any job is left alone, unless ``orphan`` (its invocation is known to be
        gone): then it ends KILLED.  Returns the status it was given, or None.
        """
        client = self._client
        kids = client.search_runs([experiment_id or self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  max_results=5000)  # fmt: skip
        states = {r.info.status for r in kids}
        if "RUNNING" in states or not (states or orphan):
            return None
        status = next((s for s in ("FAILED", "KILLED") if s in states), "FINISHED" if states else "KILLED")
        client.set_terminated(parent_id, status=status)
        return status

    def end_orphan_parents(self, project: str) -> list[str]:
        """End the RUNNING parent runs that other workflow invocations of ``project`` left behind.

        A Snakemake killed with its jobs (SIGKILL of the process group, a lost node) cannot end its
        parent runs: a job killed between ending its run and settling the parent, or between
        creating a parent and its first child, leaves one RUNNING with no job running under it.
        Called (under the store lock) by every job: a parent of another invocation of this project
        folder whose children all ended is settled as :meth:`_settle` does; one without children
        ends KILLED; one with a RUNNING child is left alone (on a cluster, jobs of a killed
        Snakemake may still run; their own exit settles it).  Returns the ids it ended.
        """
        client = self._client
        exps = [e.experiment_id for e in client.search_experiments()]
        where = (f"tags.`fian.kind` = 'workflow' and tags.`fian.project` = '{project}' "
                 "and attributes.status = 'RUNNING'")  # fmt: skip
        ended = []
        for r in client.search_runs(exps, where, max_results=5000) if exps else []:
            if r.data.tags.get("fian.workflow_run") == self.workflow:
                continue
            status = self._settle(r.info.run_id, r.info.experiment_id, orphan=True)
            if status is not None:
                log.warning("MLflow parent run %s of a dead workflow invocation was left RUNNING: ended %s",
                            r.info.run_id, status)  # fmt: skip
                ended.append(r.info.run_id)
        return ended

    def end_stale_runs(self, tags: Mapping[str, str]) -> list[str]:
        """Mark KILLED every other RUNNING run of this experiment carrying ``tags``; return their ids.

        For runs whose process died without ending them (SIGKILL, node loss); called on entry with
        this job's ``fian.job`` and ``fian.out`` (else ``fian.project``): no workflow tool runs one
        job twice at once.
        """
        if self._mlflow is None:
            return []
        client = self._client
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = retry(lambda: client.search_runs([self.experiment_id], f"{where} and attributes.status = 'RUNNING'"),
                     "search stale runs")  # fmt: skip
        ended = []
        for r in runs:
            if r.info.run_id == self.run_id or r.data.tags.get("fian.kind") == "workflow":
                continue
            note = f"run {self.run_id} of the same job found it RUNNING: its process had died"
            retry(lambda r=r, note=note: client.set_tag(r.info.run_id, "fian.ended_by", note), "tag a stale run")
            retry(lambda r=r: client.set_terminated(r.info.run_id, status="KILLED"), "end a stale run")
            log.warning("MLflow run %s was left RUNNING by a killed process: marked KILLED", r.info.run_id)
            ended.append(r.info.run_id)
            parent = r.data.tags.get("mlflow.parentRunId")
            if parent and parent != self.parent_run_id:
                with store_lock(self.uri):
                    retry(lambda p=parent: self._settle(p), "settle a stale parent run")
        return ended

    # -- logging --------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params once per run (``Config.flat()``), as :func:`param_value` writes them, with the
        credentials of a URI among them (``tracking.tracking_uri``) redacted (:func:`redact`)."""
        if self._mlflow is None:
            return
        clean = {k: redact(param_value(v)) for k, v in params.items()}
        retry(lambda: self._mlflow.log_params(clean), "log params")

    def log_json(self, obj: Any, artifact_file: str) -> None:
        """``obj`` (plain types) as the JSON artifact ``artifact_file`` (e.g. ``moment_prior.json``)."""
        if self._mlflow is None:
            return
        retry(lambda: self._mlflow.log_dict(_plain(obj), artifact_file), "log a JSON artifact")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self._mlflow is None:
            return
        retry(lambda: self._mlflow.set_tags(dict(tags)), "set tags")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, model_id: str | None = None) -> None:
        """Finite numeric metrics, names mapped by :func:`metric_key`; ``step`` = epoch; ``model_id``:
        also linked to that logged model (MLflow 3: shown on the model's page)."""
        if self._mlflow is None:
            return
        clean = {
            metric_key(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
        }
        retry(lambda: self._mlflow.log_metrics(clean, step=step, model_id=model_id), "log metrics")

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        if self._mlflow is None:
            return
        retry(lambda: self._mlflow.log_artifact(str(path), artifact_path=subdir), "log an artifact")

    def log_dataset(
        self, name: str, path: str | Path, *, context: str, digests: Mapping[str, str] | None = None,
        sha256: str | None = None,
    ) -> None:  # fmt: skip
        """``mlflow.log_input`` of one input file as a dataset ``name`` (shown in the run's Datasets).

        Its digest is the file's sha256 (first 32 hex digits: MLflow's column holds 36); the input
        tags hold the full ``sha256`` and ``digests`` (e.g. ``annotations_sha256``, ``features_sha256``).
        ``sha256``: the file's hash as the stage already computed it (:func:`data_hashes`, the same
        value its provenance records), so that a multi-GB split is not read once more; None: hashed here.
        """
        if self._mlflow is None:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        path = Path(path).resolve()
        full = sha256 or sha256_file(path)
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(path))
        ds = MetaDataset(source, name=name, digest=full[:32])
        tags = {"sha256": full, **dict(digests or {})}
        retry(lambda: self._mlflow.log_input(ds, context=context, tags=tags), "log an input")


def split_digests(records: Any, features: Any) -> dict[str, str]:
    """sha256 of a split's annotations (its records table) and of its feature array (bytes)."""
    import hashlib

    import numpy as np
    import pandas as pd

    ann = hashlib.sha256(pd.util.hash_pandas_object(records, index=True).to_numpy().tobytes()).hexdigest()
    arr = features.detach().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
    feat = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    return {"annotations_sha256": ann, "features_sha256": feat}


def build_tracker(
    cfg: Any,
    *,
    stage: str,
    inputs: Iterable[str | Path] = (),
    hashes: Mapping[str, str] | None = None,
    active: bool = True,
    split: str | None = None,
    out: str | Path | None = None,
    tags: Mapping[str, str] | None = None,
    seed: int | None = None,
) -> Tracker:
    """The :class:`Tracker` of a stage from ``cfg`` (a :class:`fian.config.Config`).

    ``inputs``: the stage's input files, hashed into ``data_sha256.*`` tags (only when tracking);
    ``hashes``: those tags already computed (:func:`data_hashes`), instead of ``inputs``.
    ``active``: false on DDP ranks other than 0 (they log nothing).  ``split``: the split the stage
    scores (run name); ``out``: its output folder (tag ``fian.out``: which job a run is).
    ``seed``: one seed's job of a config with ``seeds:`` (run name; tag ``seed``); without it the
    tag ``seed`` still records ``cfg.train.seed``.
    """
    enabled = cfg.tracking.enabled and active
    all_tags = {"seed": str(cfg.train.seed), **dict(tags or {})}
    if enabled:
        all_tags.update(hashes if hashes is not None else data_hashes(inputs))
    return Tracker(
        out=out,
        enabled=enabled,
        tracking_uri=cfg.tracking.tracking_uri,
        dataset=cfg.dataset.name,
        variant=cfg.variant,
        stage=stage,
        split=split,
        tags=all_tags,
        seed=seed,
    )
