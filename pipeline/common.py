"""What every stage command shares: the --params argument, logging, loud warnings, exit codes.

A stage module is thin: parse paths, load the config, call pure functions of ``fian``, write
atomically.  Errors that a user can fix (bad input, missing file) are raised as
:class:`StageError` subclasses or ``ValueError``/``FileNotFoundError``; ``run_stage`` prints one
clear line and exits non-zero instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fian.config import Config, ConfigError, load_config

log = logging.getLogger("fian")


class StageError(RuntimeError):
    """A failure the user can act on; the message names the file and the record."""


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--params",
        nargs="+",
        required=True,
        type=Path,
        metavar="YAML",
        help="params layers in order: params/base.yaml params/datasets/<d>.yaml [params/variants/<v>.yaml]",
    )
    return p


def load(args: argparse.Namespace) -> Config:
    cfg = load_config(*args.params)
    if len(args.params) >= 3:
        import dataclasses

        cfg = dataclasses.replace(cfg, variant=Path(args.params[-1]).stem)
    return cfg


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def warn_loud(message: str) -> None:
    """A fallback or anything else a user must not miss: framed, on stderr and in the log."""
    bar = "!" * 78
    text = f"\n{bar}\n!! {message}\n{bar}\n"
    print(text, file=sys.stderr, flush=True)
    log.warning(message)


def run_stage(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; turn expected errors into one line on stderr and exit status 1."""
    setup_logging()
    try:
        code = main(argv)
    except (StageError, ConfigError, ValueError, FileNotFoundError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return int(code or 0)
