"""The commands of README.md, taken from the README itself (its ```bash blocks), for the tests that
run them: tests/test_readme.py (all of them, cheaply), tests/test_snakemake.py (the DVC, report and
touch lines, for real on a finished tiny project), tests/test_byo_dataset.py (its target)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
# README lines that tests/test_snakemake.py runs for real on a finished tiny project
RUN_E2E = ("dvc ", "git ", "snakemake --report", "snakemake --touch", "fian plots-template")


def blocks(lang: str, text: str | None = None) -> list[str]:
    """The bodies of the fenced ```<lang> blocks."""
    text = README.read_text() if text is None else text
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def commands(text: str | None = None) -> list[str]:
    """Every command line of the bash blocks: continuations joined, comments and prompts dropped."""
    out: list[str] = []
    for body in blocks("bash", text):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # a trailing comment (not inside quotes): shlex with comments=True drops it
            words = shlex.split(line, comments=True)
            if words:
                out.append(" ".join(shlex.quote(w) for w in words))
    return out


def argv(command: str) -> list[str]:
    """A command as an argument list: leading VAR=value assignments dropped, optional parts in
    [brackets] taken as given (`[--json]` -> `--json`, `[--plot timeline.png]` -> both words)."""
    words = shlex.split(command)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    return [w.strip("[]") if w.startswith("[") or w.endswith("]") else w for w in words]


def find(prefix: str, text: str | None = None) -> list[str]:
    """The README's commands that start with ``prefix`` (as typed), in order."""
    return [c for c in commands(text) if " ".join(argv(c)).startswith(prefix)]


def e2e() -> list[str]:
    """The README commands tests/test_snakemake.py runs (as argument lists joined by spaces)."""
    return [" ".join(argv(c)) for c in commands() if " ".join(argv(c)).startswith(RUN_E2E)]


def one(prefix: str) -> list[str]:
    """The single README command starting with ``prefix``, as an argument list (an error when the
    README has none or several: the test then no longer runs what the README says)."""
    found = find(prefix)
    assert len(found) == 1, f"README.md: expected one command starting with {prefix!r}, found {found}"
    return argv(found[0])
