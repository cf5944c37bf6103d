"""The stage entry points' OpenMP defaults (issue 21 item 5, pipeline/__init__.py): set before torch
is imported, never over a value the environment gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import json, os, sys\n"
    "import fian_pipeline.evaluate\n"  # a stage module, as `python -m fian_pipeline.evaluate` imports it
    "print(json.dumps({'torch_loaded': 'torch' in sys.modules,"
    " 'env': {k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME')}}))\n"
)


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    return json.loads(proc.stdout)


def test_stage_sets_a_bounded_openmp_spin_before_torch_is_loaded() -> None:
    got = _probe()
    # torch reads the settings when it loads its OpenMP runtime: they must be in place before
    assert got["torch_loaded"] is False
    assert got["env"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}


def test_the_environment_wins_over_the_default() -> None:
    got = _probe(GOMP_SPINCOUNT="300000", KMP_BLOCKTIME="200")
    assert got["env"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "300000", "KMP_BLOCKTIME": "200"}
    # a wait policy given by the user decides alone (libgomp: GOMP_SPINCOUNT would override it)
    got = _probe(OMP_WAIT_POLICY="PASSIVE")
    assert got["env"] == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None, "KMP_BLOCKTIME": "1"}
