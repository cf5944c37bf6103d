"""What every stage command shares: the --params argument, logging, loud warnings, exit codes.

A stage module is thin: parse paths, load the config, call pure functions of ``fian``, write
atomically.  Errors that a user can fix (bad input, missing file) are raised as
:class:`StageError` subclasses or ``ValueError``/``FileNotFoundError``; ``run_stage`` prints one
clear line and exits non-zero instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fian.config import Config, ConfigError, load_config

log = logging.getLogger("fian")


class StageError(RuntimeError):
    """A failure the user can act on; the message names the file and the record."""


def plain_text(doc: str) -> str:
    """A docstring for ``--help``: RST markup (double backquotes, roles) stripped."""
    doc = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)
    return re.sub(r"``?([^`]+)``?", r"\1", doc)


def command_parser(name: str, doc: str, *, whole_doc: bool = False) -> argparse.ArgumentParser:
    """The parser of ``fian <name>``: prog ``fian <name>``, the docstring's first line (or all of it)."""
    text = plain_text(doc if whole_doc else doc.strip().splitlines()[0])
    return argparse.ArgumentParser(
        prog=f"fian {name}", description=text, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """:func:`command_parser` plus the ``--params`` argument every stage takes."""
    p = command_parser(name, doc)
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


def seed_arg(text: str) -> int:
    """``--seed``: an integer >= 0 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def with_seed(cfg: Config, seed: int | None) -> Config:
    """``cfg`` with ``train.seed`` replaced by a job's ``--seed`` (None: unchanged)."""
    if seed is None:
        return cfg
    import dataclasses

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=int(seed)))


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def warn_loud(message: str) -> None:
    """A fallback or anything else a user must not miss: framed, on stderr and in the log."""
    bar = "!" * 78
    text = f"\n{bar}\n!! {message}\n{bar}\n"
    print(text, file=sys.stderr, flush=True)
    log.warning(message)


def print_epoch(cfg: Config, record: dict, metric: str = "R@1,IoU=0.5", seed: int | None = None) -> None:
    """One line per epoch on stdout, named by the job: ``[tacos/fian] epoch 3/30 loss 1.2345 val R@1,IoU=0.5 45.67%``
    (``[tacos/fian seed 1] ...`` for one seed's job of a config with ``seeds:``).

    Under Snakemake a stage's stderr (logging, the progress bar) goes to its log and stdout to the
    console (registry ``Stage.console``), so many jobs at once still read as one line per epoch each."""
    val = record.get(f"val/{metric}")
    tail = f" val {metric} {100 * val:.2f}%" if val is not None else ""
    seconds = record.get("time_s")
    took = f" ({seconds:.0f} s)" if seconds is not None else ""
    job = f"{cfg.dataset.name}/{cfg.variant}" + (f" seed {seed}" if seed is not None else "")
    print(
        f"[{job}] epoch {record['epoch']}/{cfg.train.epochs} "
        f"loss {record['loss']:.4f}{tail}{took}",
        flush=True,
    )


def interrupt_on_signal(signum: int, frame: object) -> None:
    """SIGTERM handler of the long stages (train, evaluate): raise KeyboardInterrupt, as Ctrl-C
    does, so that a cancelled job (Snakemake, SLURM at its time limit, torchrun send SIGTERM)
    unwinds: ``finally`` blocks and atomic writes clean up and the MLflow run ends KILLED (not
    left RUNNING for the next attempt to find)."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_stage(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; turn expected errors into one line on stderr and exit status 1."""
    setup_logging()
    try:
        code = main(argv)
    except (StageError, ConfigError, ValueError, FileNotFoundError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return int(code or 0)
