"""The ``fian`` console script and the wheel follow the usual command-line and packaging conventions."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def fian(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fian_pipeline.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_fian_alone_prints_the_commands_and_exits_0():
    r = fian()
    assert r.returncode == 0, r.stderr
    assert "commands:" in r.stdout and "train" in r.stdout and "evaluate" in r.stdout


def test_version():
    r = fian("--version")
    assert r.returncode == 0
    version = (ROOT / "pyproject.toml").read_text().split('version = "')[1].split('"')[0]
    assert r.stdout.strip() == f"fian {version}"


@pytest.mark.parametrize("command", ["train", "evaluate", "render", "demo", "tables"])
def test_stage_help_names_the_command_and_has_no_rst(command):
    r = fian(command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: fian {command} "), r.stdout[:80]
    assert "``" not in r.stdout and ":class:" not in r.stdout


def test_unknown_command_is_an_error():
    r = fian("no-such-stage")
    assert r.returncode == 2 and "unknown command 'no-such-stage'" in r.stderr


@pytest.mark.slow
def test_wheel_ships_only_namespaced_packages_and_the_license(tmp_path):
    # build from a copy: setuptools writes build/ into the source tree
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    for pkg in ("fian", "pipeline"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("fian-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"fian", "fian_pipeline"}, top
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), names[-10:]


def test_the_stage_modules_live_in_pipeline_and_import_as_fian_pipeline():
    """Issue 19 item 11: the design card's folder ``pipeline/``, the namespaced import name
    ``fian_pipeline`` (pyproject's package-dir); no second copy under the old folder name."""
    import fian_pipeline

    assert Path(fian_pipeline.__file__).resolve().parent == ROOT / "pipeline"
    assert not (ROOT / "fian_pipeline").exists() and not (ROOT / "pipeline.py").exists()
    r = subprocess.run([sys.executable, "-m", "fian_pipeline.cli", "--help"], capture_output=True, text=True,
                       cwd=ROOT.parent, timeout=120)  # fmt: skip
    assert r.returncode == 0 and "python -m fian_pipeline.<stage>" in r.stdout, r.stderr[-500:]
