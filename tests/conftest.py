"""Shared test fixtures.  Tests are CPU-only; GPU checks are opt-in (`pytest -m gpu`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one xdist worker per CPU: each computes with one thread (and the processes it
    # starts, unless a test or Snakemake sets OMP_NUM_THREADS itself), so that the workers do not
    # oversubscribe the cores; set here, before any test module imports torch
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
# FIAN_SHARED_ANNOTATIONS: the folder elsewhere (e.g. from a git worktree, whose parent has no shared/)
SHARED_ANNOTATIONS = Path(os.environ.get("FIAN_SHARED_ANNOTATIONS") or REPO.parent / "shared" / "data" / "annotations")


# the files of the longest tests (README's --durations table), handed out first: with `make test`
# (pytest-xdist, -n auto --dist loadfile: a file's tests on one worker) the suite's wall time is
# then not one long file started last
LONG_FIRST = ("test_rehearsal.py", "test_snakemake.py", "test_slurm.py", "test_resume.py", "test_byo_dataset.py",
              "test_predict.py", "test_runner.py", "test_mlflow_server.py", "test_rerun.py", "test_tracking.py")  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long files first (stable otherwise); `gpu` tests run only when asked for (-m gpu) and a
    CUDA device is present."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if "gpu" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="GPU check: opt in with `pytest -m gpu` on a CUDA machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_annotations() -> Path:
    """The real annotation files (read-only, never copied into the project)."""
    if not SHARED_ANNOTATIONS.is_dir():
        pytest.skip(f"real annotations not found at {SHARED_ANNOTATIONS} (../shared beside the checkout)")
    return SHARED_ANNOTATIONS


@pytest.fixture(autouse=True)
def _isolated_tracking_uri():
    """``mlflow.set_tracking_uri`` also sets MLFLOW_TRACKING_URI in os.environ (MLflow 3), which the
    stages honour: a test that sets it must not send later tests' runs to its store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        import mlflow

        mlflow.set_tracking_uri(before or "")
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True, scope="session")
def _video_cache_in_a_temp_folder(tmp_path_factory: pytest.TempPathFactory):
    """`fian predict` caches encoded videos in ~/.cache/fian/videos by default (fian.predict_cache):
    the tests' calls, and the processes they start, use a folder of the session instead."""
    before = os.environ.get("FIAN_CACHE_DIR")
    os.environ["FIAN_CACHE_DIR"] = str(tmp_path_factory.mktemp("fian-video-cache"))
    yield
    if before is None:
        os.environ.pop("FIAN_CACHE_DIR", None)
    else:
        os.environ["FIAN_CACHE_DIR"] = before
