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
from typing import Any

from fian.config import Config, ConfigError, load_config, parse_set, read_overrides

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
    p.add_argument(
        "--overrides",
        type=Path,
        metavar="YAML",
        help="the overrides layer, after --params (the workflow passes params.yaml: a key at null is not set)",
    )
    p.add_argument(
        "--set",
        dest="set_values",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a one-off override after every file, e.g. --set train.lr=1e-4 (repeatable; the value is YAML); "
        "validated like a params file, recorded in MLflow (tag fian.overrides) and the checkpoint",
    )
    return p


def override_layers(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The layers after --params: the overrides file (null keys pruned), then the --set pairs."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if getattr(args, "overrides", None) is not None:
        layers.append((str(args.overrides), read_overrides(args.overrides)))
    if getattr(args, "set_values", None):
        layers.append(("--set", parse_set(args.set_values)))
    return layers


def applied_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """{dotted key: value} that the overrides file and --set give (later wins), for the record:
    MLflow tag ``fian.overrides`` and the checkpoint entry ``overrides``."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    for _, data in override_layers(args):
        walk("", data)
    return out


def override_tags(args: argparse.Namespace) -> dict[str, str]:
    """MLflow tag ``fian.overrides`` (JSON of :func:`applied_overrides`) when any key is overridden."""
    import json

    applied = applied_overrides(args)
    return {"fian.overrides": json.dumps(applied, sort_keys=True)} if applied else {}


def load(args: argparse.Namespace) -> Config:
    cfg = load_config(*args.params, extra=override_layers(args))
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
    """INFO logging on stderr (the stage's log); every line, and an uncaught traceback, passes
    :func:`fian.tracking.redact` (a tracking URI's password never reaches a log)."""
    from fian.tracking import RedactingFormatter

    if not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")))
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _redacted_traceback


def _redacted_traceback(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    import traceback

    from fian.tracking import redact

    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def warn_loud(message: str) -> None:
    """A fallback or anything else a user must not miss: framed, on stderr and in the log."""
    bar = "!" * 78
    text = f"\n{bar}\n!! {message}\n{bar}\n"
    print(text, file=sys.stderr, flush=True)
    log.warning(message)


def duration(seconds: float) -> str:
    """``seconds`` for a person: ``42 s``, ``5 min 24 s``, ``2 h 05 min``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def eta_seconds(epoch_seconds: Sequence[float], epochs_left: int) -> float | None:
    """Seconds the job's remaining epochs will take: ``epochs_left`` times the mean wall time of
    the epochs this process ran (the first one left out once there are others: it carries the
    warm-up, e.g. CUDA kernels and allocator); None before any epoch ran."""
    times = list(epoch_seconds)
    if not times:
        return None
    steady = times[1:] if len(times) > 1 else times
    return epochs_left * sum(steady) / len(steady)


def print_epoch(cfg: Config, record: dict, metric: str = "R@1,IoU=0.5", *, eta_s: float | None = None,
                seed: int | None = None) -> None:  # fmt: skip
    """One line per epoch on stdout, named by the job:
    ``[tacos/fian] epoch 3/30 loss 1.2345 val R@1,IoU=0.5 45.67% | epoch 12 s (train + val) | ETA 5 min 24 s (27 epochs left)``.

    The seconds are the epoch's wall time, training steps and validation together (``time_s`` of
    history.csv); ``eta_s`` (:func:`eta_seconds`): the time the job's remaining epochs will take;
    ``seed``: one seed's job of a config with ``seeds:`` (``[tacos/fian seed 1] ...``).
    Under Snakemake a stage's stderr (logging, the progress bar) goes to its log and stdout to the
    console (registry ``Stage.console``), so many jobs at once still read as one line per epoch each."""
    val = record.get(f"val/{metric}")
    tail = f" val {metric} {100 * val:.2f}%" if val is not None else ""
    seconds = record.get("time_s")
    if seconds is not None:
        tail += f" | epoch {duration(seconds)} ({'train + val' if val is not None else 'train'})"
    left = cfg.train.epochs - int(record["epoch"])
    if left <= 0:
        tail += " | last epoch"
    elif eta_s is not None:
        tail += f" | ETA {duration(eta_s)} ({left} epoch{'s' if left != 1 else ''} left)"
    job = f"{cfg.dataset.name}/{cfg.variant}" + (f" seed {seed}" if seed is not None else "")
    print(f"[{job}] epoch {record['epoch']}/{cfg.train.epochs} loss {record['loss']:.4f}{tail}",
          flush=True)  # fmt: skip


def interrupt_on_signal(signum: int, frame: object) -> None:
    """SIGTERM handler of the long stages (train, evaluate): raise KeyboardInterrupt, as Ctrl-C
    does, so that a cancelled job (Snakemake, SLURM at its time limit, torchrun send SIGTERM)
    unwinds: ``finally`` blocks and atomic writes clean up and the MLflow run ends KILLED (not
    left RUNNING for the next attempt to find)."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_stage(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; turn expected errors into one line on stderr and exit status 1.

    A stage command of a local Snakemake run (``FIAN_RUNNER`` set, ``argv`` None) is handed to
    the workflow's pre-imported runner (fian_pipeline.runner), which runs this same function in a
    forked child; without a runner, or when it declines, the stage runs here."""
    if argv is None:
        from fian_pipeline.runner import delegate

        if (code := delegate()) is not None:
            return code
    setup_logging()
    try:
        code = main(argv)
    except (StageError, ConfigError, ValueError, FileNotFoundError, KeyError, OSError) as e:
        from fian.tracking import redact

        print(redact(f"error: {e}"), file=sys.stderr)
        return 1
    return int(code or 0)
