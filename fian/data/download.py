"""Verified, resumable downloads of the released files (annotations, features, GloVe).

One file (:func:`fetch`):

* the bytes go to ``<name>.part`` beside the target; on a network failure (connection error,
  truncated body, HTTP 5xx / 429) the next attempt resumes with an HTTP ``Range`` request, after a
  backoff of ``backoff * 2**attempt`` seconds.  A ``.part`` is the documented resume mechanism: it
  may remain after a failed run (never the target itself) and the next run continues it.
* a ``.part`` continues only the file it began with: when it begins, the server's validator
  (strong ETag, Last-Modified, full length) is recorded in ``<name>.part.json``; a resume sends
  ``If-Range`` and checks the answer, and continues only while the ETag (or, without one,
  Last-Modified + length) still matches; otherwise it restarts from zero.  An UNPINNED ``.part``
  resumes only under a strong ETag: with Last-Modified + length alone (a file rewritten within
  the same second, or to the same size, looks unchanged) or no validator it restarts from zero,
  since its unverified bytes would become the recorded hash; a pinned one continues (its sha256
  decides).
* the target appears only by renaming the ``.part`` once its sha256 matches; a mismatch deletes
  the ``.part`` and raises :class:`ChecksumError`.  An HTTP 4xx (except 416 / 429), or an HTML
  page where a data file was expected (a share page, not a file), deletes it and raises at once.
* an already-present target whose sha256 is known and matches is skipped.

Several files (:func:`download_sources`): sources whose sha256 is ``None`` are downloaded and their
computed hash is recorded in ``<out>/SHA256SUMS`` (``<sha256>  <name>`` lines) so that later runs
verify against it; the caller warns loudly.  Parts named ``<stem>.part-NN`` are concatenated in
order into ``<stem>.zip``; ``.zip`` / ``.tar.gz`` / ``.tgz`` archives are extracted after
verification into ``<out>`` (members that would land outside it are refused).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import posixpath
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fian.io import sha256_file

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SUMS = "SHA256SUMS"
_PART = re.compile(r"^(?P<stem>.+)\.part-(?P<index>\d+)$")


class DownloadError(OSError):
    """A download failed: the message names the URL and the file (an OSError: stages exit 1 with it)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the pinned sha256 (the partial file is deleted)."""


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch` did for one file."""

    name: str
    path: Path
    sha256: str
    pinned: bool  # True when the sha256 came from params (or SHA256SUMS), False when just computed
    skipped: bool  # already present and verified




class _Retry(Exception):
    """A transient failure: try again (resuming)."""


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")  # <name>.part.json: the validator of the .part


def _validator(url: str, headers: Any, status: int) -> dict[str, Any]:
    """What identifies the server's file: its strong ETag, Last-Modified and full length."""
    etag = headers.get("ETag")
    if etag and etag.startswith("W/"):
        etag = None  # a weak ETag does not identify bytes (RFC 9110 13.1.5)
    length: int | None = None
    if status == 206:  # Content-Range: bytes a-b/total
        total = (headers.get("Content-Range") or "").rpartition("/")[2]
        length = int(total) if total.isdigit() else None
    elif headers.get("Content-Length", "").isdigit():
        length = int(headers["Content-Length"])
    return {"url": url, "etag": etag, "last_modified": headers.get("Last-Modified"), "length": length}


def _has_validator(rec: dict[str, Any] | None) -> bool:
    return bool(rec) and (bool(rec.get("etag")) or (bool(rec.get("last_modified")) and rec.get("length") is not None))


def _same_file(rec: dict[str, Any], now: dict[str, Any]) -> bool:
    """The server still has the file the .part began with (ETag, else Last-Modified + length)."""
    if rec.get("etag"):
        return now["etag"] == rec["etag"]
    return now["last_modified"] == rec["last_modified"] and now["length"] == rec["length"]


def _read_meta(path: Path) -> dict[str, Any] | None:
    import json

    try:
        rec = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None  # no usable validator: the .part restarts
    return rec if isinstance(rec, dict) else None


def _restart(part: Path, url: str, why: str) -> None:
    log.warning("%s: %s; the download restarts from zero", url, why)
    for p in (part, _meta_path(part)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _resume_point(url: str, part: Path, pinned: bool) -> tuple[int, dict[str, Any] | None]:
    """Bytes of ``part`` that may be continued, and the validator they were begun with.

    A ``.part`` continues only when its validator (recorded when it began) names the same URL and
    the server still has it: for an unpinned source only a strong ETag is such a validator
    (Last-Modified + length is not: it restarts); a pinned sha256 lets a ``.part`` with any or no
    validator continue (the checksum decides at the end).  Otherwise the ``.part`` is deleted.
    """
    have = part.stat().st_size if part.exists() else 0
    if not have:
        return 0, None
    rec = _read_meta(_meta_path(part))
    if rec is not None and rec.get("url") != url:
        _restart(part, url, f"{part} was begun from another URL ({rec.get('url')})")
    elif pinned or (rec is not None and rec.get("etag")):
        return have, rec if _has_validator(rec) else None
    elif _has_validator(rec):  # Last-Modified + length: a second-granular date and a size, not the bytes
        _restart(part, url, f"{part} was begun under Last-Modified {rec['last_modified']} and length {rec['length']} "
                            "only: without a strong ETag or a pinned sha256 nothing proves the bytes it holds are "
                            "the server's now (a file rewritten in the same second, or with the same size, would be "
                            "spliced)")
    else:
        _restart(part, url, f"{part} has no recorded strong ETag to prove the server's file is unchanged, and no "
                            "pinned sha256")
    return 0, None


def _attempt(url: str, part: Path, timeout: float, progress: bool, pinned: bool = False) -> None:
    """One HTTP request that appends to ``part`` (resuming from its size); raises _Retry or DownloadError.

    A resumed request sends ``If-Range`` (the recorded ETag or Last-Modified), and the answer is
    checked too: a 206 for a changed file (a server that ignores If-Range) restarts from zero.
    """
    from tqdm import tqdm

    from fian.io import write_json

    have, rec = _resume_point(url, part, pinned)
    req = urllib.request.Request(url, headers={"User-Agent": "fian-download/1"})
    if have:
        req.add_header("Range", f"bytes={have}-")
        if rec is not None:
            req.add_header("If-Range", rec["etag"] or rec["last_modified"])
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is complete, if still the same file
            now = _validator(url, e.headers, 206)
            if rec is None or (_same_file(rec, {**now, "length": now["length"] or have}) and rec["length"] == have):
                return
            _restart(part, url, f"HTTP 416 for {part} ({have} bytes) but the server's file changed")
            return _attempt(url, part, timeout, progress, pinned)
        if e.code >= 500 or e.code == 429:
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with resp:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/html") and not part.name.removesuffix(".part").endswith((".html", ".htm")):
            raise DownloadError(f"{url}: the server sent an HTML page, not the file (a share page or a login?); "
                                f"download it by hand and put it at {part.with_suffix('')}")
        now = _validator(url, resp.headers, resp.status)
        if have and resp.status == 206 and rec is not None and not _same_file(rec, now):
            resp.close()
            _restart(part, url, f"the server's file changed since {part} began (ETag / Last-Modified / length "
                                f"{rec['etag']} / {rec['last_modified']} / {rec['length']} -> {now['etag']} / "
                                f"{now['last_modified']} / {now['length']}) and it ignored If-Range")
            return _attempt(url, part, timeout, progress, pinned)
        if have and resp.status != 206:  # the server ignored Range, or If-Range found a changed file
            log.info("%s: server sent the whole file (no resume, or it changed); restarting", url)
            have = 0
        if not have:
            write_json(_meta_path(part), now)  # the validator of this .part, recorded as it begins
        length = resp.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        got = have
        mode = "ab" if have else "wb"
        with open(part, mode) as f, tqdm(total=expected, initial=have, unit="B", unit_scale=True,
                                         desc=part.name.removesuffix(".part"), disable=not progress,
                                         leave=False) as bar:
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, OSError) as e:
                raise _Retry(f"connection lost after {got} bytes ({type(e).__name__})") from None
        if expected is not None and got < expected:
            raise _Retry(f"truncated: got {got} of {expected} bytes")


def fetch(url: str, dest: str | Path, sha256: str | None = None, *, retries: int = 4, backoff: float = 2.0,
          timeout: float = 60.0, progress: bool = True) -> Fetched:
    """Download ``url`` to ``dest`` (see the module docstring); return the verified sha256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sha256 = sha256.lower() if sha256 else None
    if dest.exists() and sha256 is not None:
        if sha256_file(dest) == sha256:
            log.info("%s: present, sha256 verified; skipped", dest)
            return Fetched(dest.name, dest, sha256, True, True)
        log.warning("%s: present but its sha256 differs from the pinned one; downloading again", dest)
    part = dest.with_name(dest.name + ".part")
    meta = _meta_path(part)
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            wait = backoff * 2 ** (attempt - 1)
            log.warning("%s: %s; retry %d/%d in %.1f s", url, last, attempt, retries, wait)
            time.sleep(wait)
        try:
            _attempt(url, part, timeout, progress, pinned=sha256 is not None)
            break
        except _Retry as e:
            last = str(e)
        except DownloadError:
            for p in (part, meta):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            raise
    else:
        if part.exists() and part.stat().st_size == 0:
            part.unlink()
            meta.unlink(missing_ok=True)
        kept = f"; {part} kept: the next run resumes it" if part.exists() else ""
        raise DownloadError(f"{url}: failed after {retries + 1} attempts ({last}){kept}")
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        meta.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: sha256 mismatch for {dest.name}: expected {sha256}, got {digest} "
                            f"(partial file deleted)")
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    return Fetched(dest.name, dest, digest, sha256 is not None, False)


def git_blob_sha1(path: str | Path) -> str:
    """The git blob id of a file: SHA-1 of ``b"blob <size>\\0"`` followed by its bytes (``git hash-object``)."""
    import hashlib

    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_sums(path: str | Path) -> dict[str, str]:
    """``name -> sha256`` from a SHA256SUMS file (missing file: empty)."""
    path = Path(path)
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise DownloadError(f"{path}:{n}: expected '<sha256>  <name>', got {line!r}")
        out[name] = digest
    return out


def write_sums(path: str | Path, sums: dict[str, str]) -> None:
    from fian.io import write_text

    write_text(path, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


def _safe_target(root: Path, name: str, archive: Path) -> Path:
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DownloadError(f"{archive}: member {name!r} would be written outside {root}; refused")
    return target


def _member_paths(names: list[str], archive: Path, root: Path) -> list[str]:
    """Each member's normalised relative path (``a/../b.txt`` -> ``b.txt``, ``./x`` -> ``x``); a
    member outside ``root`` (absolute, ``..``) or two members with one path (listed twice, or
    ``b.txt`` and ``a/../b.txt``) is refused naming the archive and the member."""
    out: list[str] = []
    first: dict[str, str] = {}
    for name in names:
        norm = posixpath.normpath(name)
        if norm.startswith("/") or norm == ".." or norm.startswith("../") or norm == ".":
            raise DownloadError(f"{archive}: member {name!r} would be written outside {root}; refused")
        _safe_target(root, norm, archive)  # no escape through a symlink already in root either
        if norm in first:
            same = "listed twice" if first[norm] == name else f"and {first[norm]!r} name the same file {norm!r}"
            raise DownloadError(f"{archive}: member {name!r} {same}: which copy is meant is ambiguous; refused "
                                "(nothing extracted)")
        first[norm] = name
        out.append(norm)
    return out


def extract(archive: str | Path, out_dir: str | Path) -> list[Path]:
    """Extract a .zip / .tar.gz / .tgz into ``out_dir`` via a temporary folder (no half-extracted members).

    Only regular files are extracted (their bytes, streamed to their normalised paths: see
    :func:`_member_paths`); every member is checked before the first byte is written.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    from fian.io import remove_stale_temps, temp_name

    staging = out_dir / f"{archive.name}.extracting"  # never created: names the temp folders
    remove_stale_temps(staging, ".d")  # a killed extraction's members
    tmp = out_dir / temp_name(staging, ".d")
    tmp.mkdir()
    try:
        with contextlib.ExitStack() as stack:
            if archive.suffix == ".zip":
                z: Any = stack.enter_context(zipfile.ZipFile(archive))
                members = [m for m in z.infolist() if not m.is_dir()]
                names = _member_paths([m.filename for m in members], archive, out_dir)
                open_member = z.open
            elif archive.name.endswith((".tar.gz", ".tgz")):
                z = stack.enter_context(tarfile.open(archive))
                members = [m for m in z.getmembers() if m.isfile()]  # no links, devices, folders
                names = _member_paths([m.name for m in members], archive, out_dir)
                open_member = z.extractfile
            else:
                raise DownloadError(f"{archive}: not an archive this stage extracts (.zip, .tar.gz, .tgz)")
            for m, name in zip(members, names, strict=True):
                dst = tmp / name
                try:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with open_member(m) as src, open(dst, "wb") as f:
                        shutil.copyfileobj(src, f, CHUNK)
                except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
                    raise DownloadError(f"{archive}: member {name!r} clashes with another member ({e}); "
                                        "refused") from None
        out = []
        for name in names:
            target = _safe_target(out_dir, name, archive)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, target)
            out.append(target)
        return out
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DownloadError(f"{archive}: corrupt archive ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def join_parts(parts: list[Path], target: Path) -> Path:
    """Concatenate ``parts`` (in the given order) into ``target``, atomically."""
    from fian.io import atomic_path

    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
    return target


def _archives(fetched: list[Fetched], out_dir: Path) -> list[Path]:
    """The archives to extract: every .zip/.tar.gz fetched, and each joined ``<stem>.part-NN`` group."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    out = []
    for f in fetched:
        m = _PART.match(f.name)
        if m:
            groups.setdefault(m["stem"], []).append((int(m["index"]), f.path))
        elif f.name.endswith((".zip", ".tar.gz", ".tgz")):
            out.append(f.path)
    for stem, parts in groups.items():
        target = out_dir / f"{stem}.zip"
        paths = [p for _, p in sorted(parts)]
        if not target.exists() or any(p.stat().st_mtime > target.stat().st_mtime for p in paths):
            join_parts(paths, target)
        out.append(target)
    return out


def download_sources(sources: Iterable[Any], out_dir: str | Path, *, retries: int = 4, backoff: float = 2.0,
                     timeout: float = 60.0, progress: bool = True, extract_archives: bool = True) -> list[Fetched]:
    """Fetch every source (objects with ``name``, ``url``, ``sha256``) into ``out_dir``.

    Unpinned sources are verified against ``<out>/SHA256SUMS`` when a previous run recorded them;
    otherwise their computed hash is recorded there.  Returns one :class:`Fetched` per source.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sums_path = out_dir / SUMS
    sums = read_sums(sums_path)
    done: list[Fetched] = []
    for src in sources:
        if "/" in src.name or src.name in ("", ".", ".."):
            raise DownloadError(f"source {src.name!r}: a name must be a plain file name")
        expected = src.sha256 or sums.get(src.name)
        f = fetch(src.url, out_dir / src.name, expected, retries=retries, backoff=backoff, timeout=timeout,
                  progress=progress)
        blob = getattr(src, "git_blob_sha1", None)
        if blob and git_blob_sha1(f.path) != blob.lower():  # the repository tree's id of the file
            got = git_blob_sha1(f.path)
            f.path.unlink()
            sums.pop(src.name, None)
            write_sums(sums_path, sums)
            raise ChecksumError(f"{src.url}: git blob id mismatch for {src.name}: expected {blob}, got {got} "
                                "(file deleted)")
        pinned = src.sha256 is not None or bool(blob)
        if src.sha256 is None:  # recorded: later runs verify against it (a git-blob pin too)
            sums[src.name] = f.sha256
            write_sums(sums_path, sums)
        done.append(Fetched(f.name, f.path, f.sha256, pinned, f.skipped))
    if extract_archives:
        for archive in _archives(done, out_dir):
            marker = archive.with_name(archive.name + ".extracted")
            digest = sha256_file(archive)
            if marker.exists() and marker.read_text().strip() == digest:
                continue
            names = extract(archive, out_dir)
            log.info("%s: extracted %d file(s)", archive, len(names))
            from fian.io import write_text

            write_text(marker, digest + "\n")
    return done
