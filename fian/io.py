"""Atomic writes: a crash leaves either the old file or the new one, never half a file.

Temporary files.  :func:`atomic_path` writes to a hidden temp beside the target and renames it
onto the target when the block succeeds.  The temp's name says whose it is::

    .<target name>.fian-tmp.<host>.<pid>-<start>.<random><target suffix>
    e.g. .train.parquet.fian-tmp.node07.48211-9137734.3f9a0c1d.parquet

(``<start>``: the writer's start time in clock ticks since boot, from ``/proc/<pid>/stat``; 0 where
there is no ``/proc``).  A writer killed by SIGKILL, OOM or node loss cannot delete its temp; the
next :func:`atomic_path` of the same target removes every temp of that target whose writer is
provably dead: same host, and no process with that pid and start time (pid reuse cannot make a
dead writer look alive, nor the reverse).  Temps of a live writer, and temps written on another
host (whose processes cannot be checked from here), are left; the latter are logged.  No stage
lists a folder to find its inputs (names come from params), so a leftover is never read as data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TEMP_MARK = ".fian-tmp."


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def _start_time(pid: int) -> int | None:
    """Start time of process ``pid`` (clock ticks since boot); None: no such (live) process; 0: unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        return 0 if _pid_alive(pid) else None  # no /proc (macOS): the pid alone
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 on; the name in () may hold spaces
    if fields[0] in ("Z", "X"):  # a zombie (killed, not yet reaped) writes nothing any more
        return None
    return int(fields[19])  # field 22: starttime


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie -- ended, not yet reaped -- does not)."""
    return _start_time(pid) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def temp_prefix(path: Path) -> str:
    """What every temp name of ``path`` starts with."""
    return f".{path.name}{TEMP_MARK}"


def temp_name(path: Path, suffix: str) -> str:
    """A fresh temp name for ``path`` (see the module docstring)."""
    pid = os.getpid()
    return f"{temp_prefix(path)}{_host()}.{pid}-{_start_time(pid) or 0}.{secrets.token_hex(4)}{suffix}"


def _writer(path: Path, temp: str, suffix: str) -> tuple[str, int, int] | None:
    """``(host, pid, start)`` encoded in a temp name of ``path``, or None if it is not one of ours."""
    rest = temp[len(temp_prefix(path)) :]
    if not temp.startswith(temp_prefix(path)) or not rest.endswith(suffix):
        return None
    m = re.fullmatch(r"([A-Za-z0-9-]+)\.(\d+)-(\d+)\.[0-9a-f]{8}", rest[: len(rest) - len(suffix)])
    return (m[1], int(m[2]), int(m[3])) if m else None


def remove_stale_temps(path: str | Path, suffix: str | None = None) -> list[Path]:
    """Delete the temps of ``path`` left by dead writers on this host; return what was deleted."""
    path = Path(path)
    suffix = suffix or path.suffix or ".tmp"
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(temp_prefix(path))]
    except FileNotFoundError:
        return removed
    here = _host()
    for e in entries:
        who = _writer(path, e.name, suffix)
        if who is None:
            continue
        host, pid, start = who
        if host != here:
            log.warning("%s: temp file of a writer on host %s left alone (cannot check that process from %s); "
                        "delete it by hand once no job writes %s", Path(e.path), host, here, path)
            continue
        now = _start_time(pid)
        if now is not None and (start == 0 or now == 0 or now == start):
            continue  # that writer (or, without start times, some process with its pid) is alive
        with contextlib.suppress(FileNotFoundError):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)  # a temp folder (an archive being extracted)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
            log.info("%s: removed the temp file of a writer that died (pid %d)", Path(e.path), pid)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (h5py, pandas and torch choose formats by it).
    Stale temps of ``path`` left by killed writers are removed first (module docstring).
    """
    path = Path(path)
    suffix = suffix or path.suffix or ".tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path, suffix)
    tmp_path = path.with_name(temp_name(path, suffix))
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for outputs
    os.close(fd)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n")


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_utf8(path: str | Path, error: type[Exception] = ValueError, *, data: bytes | None = None) -> str:
    """The file (or its bytes ``data``) decoded as UTF-8, a leading BOM dropped; a byte that is not
    UTF-8 raises ``error`` naming the file, the line and the byte offset."""
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{path}: not UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} (line {line}): "
                    f"{e.reason}; save the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def loads_json(text: str, where: str | Path, error: type[Exception] = ValueError, *, first_line: int = 1,
               **kwargs: Any) -> Any:
    """``json.loads(text, **kwargs)``; malformed or too deeply nested JSON raises ``error`` naming
    the file ``where`` and the line (``first_line``: the file's line number of the text's first
    line, for one line of a JSON-lines file).

    (Python's parser recurses once per ``[`` / ``{``: 100,000 of them raise RecursionError, which
    no stage would otherwise report as a bad input.)"""
    try:
        return json.loads(text, **kwargs)
    except json.JSONDecodeError as e:
        raise error(f"{where}: line {first_line + e.lineno - 1} column {e.colno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        at = f": line {first_line}" if first_line != 1 else ""
        raise error(f"{where}{at}: JSON nested too deeply (arrays/objects inside one another beyond Python's "
                    f"recursion limit {sys.getrecursionlimit()}): not a file this project reads") from None


def read_json(path: str | Path, error: type[Exception] = ValueError, **kwargs: Any) -> Any:
    """A JSON file: :func:`read_utf8` then :func:`loads_json` (errors name the file and the line)."""
    return loads_json(read_utf8(path, error), path, error, **kwargs)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (downloads, weights, data-hash tags)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
