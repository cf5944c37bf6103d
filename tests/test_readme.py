"""README.md's commands work as written: each command of its ```bash blocks, taken from the README
itself (tests/readme_commands.py), is checked the cheapest real way:

* ``snakemake ...``: a dry run (``-n`` added) in a copy of the workflow files, from the README's own
  arguments (a target after ``--configfile`` fails here: that option takes several values);
* ``fian ...``: its arguments parsed by the command's own parser (a flag it lacks, a missing
  required argument fail); ``fian params`` and ``fian plots-template`` run;
* ``dvc ...`` / ``mlflow ...``: parsed by DVC's and MLflow's own command-line parsers;
* ``make X``: ``make -n X``; Python blocks compile.

The DVC, ``git``, ``snakemake --report`` and ``snakemake --touch`` lines also run for real on a
finished tiny project in tests/test_snakemake.py, and the bring-your-own target in
tests/test_byo_dataset.py (both take them from the README too).  A README command this test does
not know how to check fails it: docs and code cannot drift apart unnoticed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import readme_commands as RC

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
COMMANDS = RC.commands()
# not run: shell set-up and a client of a served model (test_predict.py serves one for real)
NOT_RUN = {".": "sources the venv", "export": "sets a variable", "curl": "needs a served model (tests/test_predict.py)"}


def _kind(command: str) -> str:
    return RC.argv(command)[0]


def test_every_readme_command_is_known() -> None:
    assert len(COMMANDS) >= 20, COMMANDS  # the README's blocks were found
    known = {"make", "snakemake", "fian", "dvc", "mlflow", "git", *NOT_RUN}
    unknown = [c for c in COMMANDS if _kind(c) not in known]
    assert not unknown, f"README commands this test cannot check: {unknown}"


def test_the_venv_the_readme_activates_is_the_one_make_creates() -> None:
    (activate,) = [RC.argv(c) for c in COMMANDS if _kind(c) == "."]
    venv = re.search(r"^VENV\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert venv and activate == [".", f"{venv.group(1)}/bin/activate"], (activate, venv)


@pytest.mark.parametrize("command", [c for c in COMMANDS if _kind(c) == "make"])
def test_make_targets_exist(command: str) -> None:
    words = RC.argv(command)
    proc = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workflow files and params, as in a fresh clone; what the README tells a user to put in
    place first is put there (the TACoS features fetched by hand; a bring-your-own config)."""
    proj = tmp_path_factory.mktemp("readme")
    shutil.copy(ROOT / "Snakefile", proj / "Snakefile")
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    for d in ("workflow", "params"):
        shutil.copytree(ROOT / d, proj / d)
    (proj / "data/raw/tacos/features").mkdir(parents=True)
    (proj / "data/raw/tacos/features/tall_c3d_features.hdf5").write_bytes(b"")
    # `<name>`: the synthetic dataset under a config of its own name (its params file exists)
    shutil.copy(proj / "workflow/config/default.yaml", proj / "workflow/config/synthetic.yaml")
    return proj


def _fill(words: list[str]) -> list[str]:
    return [w.replace("<name>", "synthetic") for w in words]


@pytest.mark.parametrize("command", [c for c in COMMANDS if _kind(c) == "snakemake" and "--report" not in c])
def test_snakemake_commands_dry_run_as_written(command: str, workflow_copy: Path) -> None:
    words = _fill(RC.argv(command))
    proc = subprocess.run([str(BIN / "snakemake"), *words[1:], "-n"], cwd=workflow_copy, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{command}\n{out[-3000:]}"
    assert "This was a dry-run" in out or "Nothing to be done" in out, out[-2000:]


class _Parsed(Exception):
    """Raised by the patched parse_args once the command's own parser accepted the arguments."""


@pytest.mark.parametrize("command", [c for c in COMMANDS if _kind(c) == "fian"])
def test_fian_commands_parse_with_their_own_parser(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    words = RC.argv(command)
    from fian_pipeline.cli import commands

    module = importlib.import_module(f"fian_pipeline.{commands()[words[1]]}")
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        original(self, args, namespace)  # exits 2 on a flag it lacks or a missing required argument
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed):
        module.main(words[2:])


def test_fian_commands_that_are_cheap_run(tmp_path: Path) -> None:
    for command in [c for c in COMMANDS if RC.argv(c)[:2] in (["fian", "params"], ["fian", "plots-template"])]:
        proc = subprocess.run([str(BIN / "fian"), *RC.argv(command)[1:]], cwd=tmp_path if "plots" in command else ROOT,
                              env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
    assert (tmp_path / ".dvc/plots/offline.html").is_file()  # where the README's dvc plots line reads it


@pytest.mark.parametrize("command", [c for c in COMMANDS if _kind(c) == "dvc"])
def test_dvc_commands_parse_with_dvcs_own_parser(command: str) -> None:
    from dvc.cli import DvcParserError
    from dvc.cli.parser import get_main_parser

    try:
        get_main_parser().parse_args(RC.argv(command)[1:])
    except (SystemExit, DvcParserError) as e:
        pytest.fail(f"{command}: dvc does not accept it ({type(e).__name__})")


@pytest.mark.parametrize("command", [c for c in COMMANDS if _kind(c) == "mlflow"])
def test_mlflow_commands_parse_with_mlflows_own_parser(command: str) -> None:
    import click
    from mlflow.cli import cli

    words = RC.argv(command)[1:]
    group: click.Command = cli
    while isinstance(group, click.Group):  # mlflow models serve ...: walk down to the command
        name, words = words[0], words[1:]
        group = group.get_command(click.Context(group), name)
        assert group is not None, f"{command}: mlflow has no command {name!r}"
    try:
        group.make_context(group.name or "mlflow", list(words))
    except click.ClickException as e:
        pytest.fail(f"{command}: {e.format_message()}")


def test_commands_left_to_the_end_to_end_test_are_there() -> None:
    """test_snakemake.py runs these README lines (it asserts so): they exist and are few."""
    e2e = RC.e2e()
    assert any(c.startswith("dvc exp run") for c in e2e) and any(c.startswith("dvc exp show") for c in e2e)
    assert any("--report" in c for c in e2e) and any("--touch" in c for c in e2e)


def test_python_blocks_compile() -> None:
    for body in RC.blocks("python"):
        compile(body, "README.md", "exec")


def test_citation_file_cites_the_paper_and_this_project() -> None:
    """CITATION.cff (Citation File Format 1.2.0): the project as software, the paper as its
    preferred citation; the DOI and authors as the paper's own reference format gives them."""
    import yaml

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["message"]
    assert cff["title"].startswith("fian") and cff["authors"] and cff["license"] == "MIT"
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper" and paper["year"] == 2020
    text_path = ROOT.parent / "shared/paper/fian-mm2020.txt"
    if not text_path.is_file():
        pytest.skip(f"paper text not found at {text_path}")
    text = text_path.read_text()
    reference = next(line for line in text.splitlines() if "https://doi.org/" in line and "Xiaoye Qu" in line)
    assert f"https://doi.org/{paper['doi']}" in reference
    assert paper["title"] in reference
    names = [f"{a['given-names']} {a['family-names']}" for a in paper["authors"]]
    positions = [reference.index(n) for n in names]
    assert positions == sorted(positions) and len(names) == 7  # all seven, in the paper's order
