"""Downloads against a local HTTP server: resume, retries, checksums, errors, archives, the stage."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from fian.data.download import ChecksumError, DownloadError, download_sources, fetch, read_sums

PAYLOAD = bytes(range(256)) * 40  # 10 KiB


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; ``server.modes[path]`` picks a behaviour; requests are logged."""

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        srv.if_range.append(self.headers.get("If-Range"))  # type: ignore[attr-defined]
        mode = srv.modes.get(self.path, "")  # type: ignore[attr-defined]
        hits = sum(1 for p, _ in srv.log if p == self.path)  # type: ignore[attr-defined]
        if self.path in srv.before:  # type: ignore[attr-defined]
            srv.before[self.path](hits)  # type: ignore[attr-defined]  # e.g. the file changes
        # validators: {"etag": '"x"', "last_modified": "...", "if_range": honour If-Range}
        val = srv.validators.get(self.path, {})  # type: ignore[attr-defined]
        current = {val.get("etag"), val.get("last_modified")} - {None}
        if mode == "404" or self.path not in srv.files:  # type: ignore[attr-defined]
            self.send_error(404, "Not Found")
            return
        if mode == "500" or (mode.startswith("fail_first:") and hits <= int(mode.split(":")[1])):
            self.send_error(500, "Server Error")
            return
        body = srv.files[self.path]  # type: ignore[attr-defined]
        start = 0
        rng = self.headers.get("Range")
        if rng and val.get("if_range") and self.headers.get("If-Range") not in current:
            rng = None  # If-Range names another version of the file: send all of it (RFC 9110 13.1.5)
        if rng and mode != "norange":
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                for key, header in (("etag", "ETag"), ("last_modified", "Last-Modified")):
                    if val.get(key):
                        self.send_header(header, val[key])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        part = body[start:]
        self.send_header("Content-Length", str(len(part)))
        for key, header in (("etag", "ETag"), ("last_modified", "Last-Modified")):
            if val.get(key):
                self.send_header(header, val[key])
        self.send_header("Content-Type", "text/html" if mode == "html" else "application/octet-stream")
        self.end_headers()
        if mode.startswith("truncate:") and hits <= int(mode.split(":")[2]):
            # send only the first N bytes of the body, then close: a truncated transfer
            self.wfile.write(part[: int(mode.split(":")[1])])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(part)


@pytest.fixture()
def server() -> Iterator[SimpleNamespace]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.modes, httpd.log = {}, {}, []  # type: ignore[attr-defined]
    httpd.validators, httpd.before, httpd.if_range = {}, {}, []  # type: ignore[attr-defined]
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield SimpleNamespace(httpd=httpd, url=lambda p: base + p, files=httpd.files, modes=httpd.modes,
                          log=httpd.log, validators=httpd.validators, before=httpd.before, if_range=httpd.if_range)
    httpd.shutdown()
    httpd.server_close()


def run(url: str, dest: Path, digest: str | None, **kw: object):
    return fetch(url, dest, digest, retries=kw.pop("retries", 3), backoff=0.0, timeout=5, progress=False, **kw)


def test_fetch_verifies_and_skips_present(server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    f = run(server.url("/a.bin"), tmp_path / "a.bin", sha(PAYLOAD))
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD and f.pinned and not f.skipped
    assert not (tmp_path / "a.bin.part").exists()
    again = run(server.url("/a.bin"), tmp_path / "a.bin", sha(PAYLOAD))
    assert again.skipped and len(server.log) == 1


def test_truncated_body_is_resumed_with_range(server, tmp_path: Path) -> None:
    server.files["/t.bin"] = PAYLOAD
    server.modes["/t.bin"] = "truncate:3000:1"  # the first response stops after 3000 bytes
    run(server.url("/t.bin"), tmp_path / "t.bin", sha(PAYLOAD))
    assert (tmp_path / "t.bin").read_bytes() == PAYLOAD
    assert server.log[1] == ("/t.bin", "bytes=3000-")  # the retry asked for the rest only


def test_retries_then_succeeds_after_server_errors(server, tmp_path: Path) -> None:
    server.files["/r.bin"] = PAYLOAD
    server.modes["/r.bin"] = "fail_first:2"
    run(server.url("/r.bin"), tmp_path / "r.bin", sha(PAYLOAD))
    assert (tmp_path / "r.bin").read_bytes() == PAYLOAD and len(server.log) == 3


def test_resume_from_existing_part_and_server_without_range(server, tmp_path: Path) -> None:
    server.files["/p.bin"] = PAYLOAD
    (tmp_path / "p.bin.part").write_bytes(PAYLOAD[:5000])
    run(server.url("/p.bin"), tmp_path / "p.bin", sha(PAYLOAD))
    assert server.log[0][1] == "bytes=5000-" and (tmp_path / "p.bin").read_bytes() == PAYLOAD
    # a server that ignores Range sends everything again: the .part restarts, no duplicated bytes
    server.modes["/q.bin"], server.files["/q.bin"] = "norange", PAYLOAD
    (tmp_path / "q.bin.part").write_bytes(PAYLOAD[:5000])
    run(server.url("/q.bin"), tmp_path / "q.bin", sha(PAYLOAD))
    assert (tmp_path / "q.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_everything(server, tmp_path: Path) -> None:
    server.files["/c.bin"] = PAYLOAD
    with pytest.raises(ChecksumError, match=r"c\.bin.*expected 0{64}"):
        run(server.url("/c.bin"), tmp_path / "c.bin", "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_http_404_fails_at_once_leaving_nothing(server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404"):
        run(server.url("/missing.bin"), tmp_path / "m.bin", None)
    assert list(tmp_path.iterdir()) == [] and len(server.log) == 1


def test_persistent_500_gives_up_after_retries(server, tmp_path: Path) -> None:
    server.files["/e.bin"], server.modes["/e.bin"] = PAYLOAD, "500"
    with pytest.raises(DownloadError, match=r"failed after 3 attempts \(HTTP 500"):
        run(server.url("/e.bin"), tmp_path / "e.bin", None, retries=2)
    assert list(tmp_path.iterdir()) == []


def test_persistent_truncation_keeps_only_the_resumable_part(server, tmp_path: Path) -> None:
    server.files["/k.bin"], server.modes["/k.bin"] = PAYLOAD, "truncate:100:99"
    with pytest.raises(DownloadError, match=r"k\.bin: failed after 2 attempts.*kept: the next run resumes"):
        run(server.url("/k.bin"), tmp_path / "k.bin", sha(PAYLOAD), retries=1)
    # never the target itself; the .part and the server's validator recorded when it began
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.bin.part", "k.bin.part.json"]
    server.modes["/k.bin"] = ""
    run(server.url("/k.bin"), tmp_path / "k.bin", sha(PAYLOAD))  # the next run resumes
    assert (tmp_path / "k.bin").read_bytes() == PAYLOAD


def test_html_share_page_is_refused(server, tmp_path: Path) -> None:
    server.files["/share"], server.modes["/share"] = b"<html>log in</html>", "html"
    with pytest.raises(DownloadError, match="HTML page.*by hand"):
        run(server.url("/share"), tmp_path / "feat.hdf5", None)
    assert list(tmp_path.iterdir()) == []


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    return buf.getvalue()


def test_unpinned_sources_recorded_then_verified_and_archives_extracted(server, tmp_path: Path) -> None:
    z = _zip({"glove.tiny.txt": b"the 0.1 0.2\n"})
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w:gz") as t:
        info = tarfile.TarInfo("feats/v1.npy")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    server.files.update({"/g.zip": z, "/f.tar.gz": tbuf.getvalue(), "/big.part-00": z[:50], "/big.part-01": z[50:]})
    srcs = [SimpleNamespace(name="g.zip", url=server.url("/g.zip"), sha256=None),
            SimpleNamespace(name="f.tar.gz", url=server.url("/f.tar.gz"), sha256=sha(tbuf.getvalue())),
            SimpleNamespace(name="big.part-01", url=server.url("/big.part-01"), sha256=None),
            SimpleNamespace(name="big.part-00", url=server.url("/big.part-00"), sha256=None)]
    done = download_sources(srcs, tmp_path, backoff=0, progress=False)
    assert [f.pinned for f in done] == [False, True, False, False]
    assert read_sums(tmp_path / "SHA256SUMS")["g.zip"] == sha(z)
    assert (tmp_path / "glove.tiny.txt").read_bytes() == b"the 0.1 0.2\n"
    assert (tmp_path / "feats" / "v1.npy").read_bytes() == b"abc"
    assert (tmp_path / "big.zip").read_bytes() == z  # parts joined in index order
    n = len(server.log)
    again = download_sources(srcs, tmp_path, backoff=0, progress=False)
    assert all(f.skipped for f in again) and len(server.log) == n  # verified from SHA256SUMS, no request
    # a recorded hash that no longer matches the server's bytes is a checksum error
    (tmp_path / "g.zip").unlink()
    server.files["/g.zip"] = z + b"changed"
    with pytest.raises(ChecksumError, match="g.zip"):
        download_sources(srcs[:1], tmp_path, backoff=0, progress=False)


def test_archive_member_outside_out_dir_is_refused(server, tmp_path: Path) -> None:
    server.files["/evil.zip"] = _zip({"../escape.txt": b"x"})
    src = SimpleNamespace(name="evil.zip", url=server.url("/evil.zip"), sha256=None)
    with pytest.raises(DownloadError, match="outside"):
        download_sources([src], tmp_path / "out", backoff=0, progress=False)
    assert not (tmp_path / "escape.txt").exists()


def _archive(kind: str, members: list[tuple[str, bytes]]) -> Path:
    """A .zip or .tar.gz holding ``members`` in order (a name may repeat: zip and tar allow it)."""
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as z, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile warns "Duplicate name": that is the test
            for n, b in members:
                z.writestr(n, b)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for n, b in members:
                info = tarfile.TarInfo(n)
                info.size = len(b)
                t.addfile(info, io.BytesIO(b))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_member_paths_are_normalised_and_a_repeated_member_refused(tmp_path: Path, kind: str) -> None:
    """``a/../b.txt`` and a member listed twice gave an uncaught FileNotFoundError."""
    from fian.data.download import extract

    archive = tmp_path / f"x.{kind}"
    archive.write_bytes(_archive(kind, [("a/../b.txt", b"B"), ("./c/d.txt", b"D")]))
    out = tmp_path / "out"
    out.mkdir()
    assert extract(archive, out) == [out / "b.txt", out / "c/d.txt"]
    assert (out / "b.txt").read_bytes() == b"B" and (out / "c/d.txt").read_bytes() == b"D"
    for members, why in (([("x.txt", b"1"), ("y.txt", b"2"), ("x.txt", b"3")], r"member 'x\.txt' listed twice"),
                         ([("b2.txt", b"1"), ("a/../b2.txt", b"2")],
                          r"member 'a/\.\./b2\.txt' and 'b2\.txt' name the same file 'b2\.txt'"),
                         ([("a/../../up.txt", b"1")], r"member 'a/\.\./\.\./up\.txt' would be written outside")):
        archive.write_bytes(_archive(kind, members))
        fresh = tmp_path / f"fresh-{len(list(tmp_path.iterdir()))}"
        fresh.mkdir()
        with pytest.raises(DownloadError, match=rf"x\.{kind.replace('.', '[.]')}: {why}"):
            extract(archive, fresh)
        assert list(fresh.iterdir()) == []  # nothing extracted, no temp folder left
    assert not (tmp_path / "up.txt").exists()


def test_stage_downloads_annotations_from_params(server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fian_pipeline.download import main

    server.files["/train.json"] = b"{}"
    params = tmp_path / "d.yaml"
    params.write_text(f"dataset:\n  annotation_sources:\n    - name: train.json\n      url: {server.url('/train.json')}\n"
                      f"      sha256: {sha(b'{}')}\n")
    assert main(["--params", str(params), "--kind", "annotations", "--out", str(tmp_path / "raw")]) == 0
    assert (tmp_path / "raw" / "train.json").read_bytes() == b"{}"
    # a failing download is one clear line and exit status 1, leaving nothing
    from fian_pipeline.common import run_stage

    params.write_text(params.read_text().replace("/train.json", "/gone.json"))
    assert run_stage(main, ["--params", str(params), "--kind", "annotations", "--out", str(tmp_path / "raw2")]) == 1
    assert "gone.json: HTTP 404" in capsys.readouterr().err and not any((tmp_path / "raw2").iterdir())
    params.write_text("text:\n  word_dim: 300\n")
    with pytest.raises(ValueError, match="text.glove"):
        main(["--params", str(params), "--kind", "glove", "--out", str(tmp_path / "g")])


# ------------------------------------------------- unpinned downloads: a .part resumes only the same file

NEW = bytes(reversed(PAYLOAD))  # the server's file after it changed: same length, other bytes
LM1, LM2 = "Tue, 01 Dec 2026 10:00:00 GMT", "Tue, 01 Dec 2026 11:00:00 GMT"


def begin_part(server, tmp_path: Path, path: str, validators: dict) -> Path:
    """A first run whose transfer breaks after 3000 bytes: the .part (and its validator) remain."""
    server.files[path], server.validators[path] = PAYLOAD, dict(validators)
    server.modes[path] = "truncate:3000:1"
    dest = tmp_path / path.strip("/")
    with pytest.raises(DownloadError, match="kept: the next run resumes"):
        run(server.url(path), dest, None, retries=0)
    assert dest.with_name(dest.name + ".part").stat().st_size == 3000
    return dest


@pytest.mark.parametrize("honours_if_range", [True, False])
def test_changed_etag_restarts_from_zero_and_records_the_new_hash(server, tmp_path: Path,
                                                                   honours_if_range: bool) -> None:
    dest = begin_part(server, tmp_path, "/u.bin", {"etag": '"v1"', "if_range": honours_if_range})
    server.files["/u.bin"], server.validators["/u.bin"]["etag"] = NEW, '"v2"'  # the file changes
    src = SimpleNamespace(name="u.bin", url=server.url("/u.bin"), sha256=None)
    (f,) = download_sources([src], tmp_path, backoff=0, progress=False)
    assert dest.read_bytes() == NEW and f.sha256 == sha(NEW) and read_sums(tmp_path / "SHA256SUMS")["u.bin"] == sha(NEW)
    assert server.log[1] == ("/u.bin", "bytes=3000-") and server.if_range[1] == '"v1"'
    # a server honouring If-Range answers 200 with the whole new file; one ignoring it answers 206 for
    # the new file, which the client detects (ETag v2) and restarts without Range
    assert [r for _, r in server.log[2:]] == ([] if honours_if_range else [None])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SHA256SUMS", "u.bin"]


def test_unchanged_etag_resumes(server, tmp_path: Path) -> None:
    dest = begin_part(server, tmp_path, "/s.bin", {"etag": '"v1"', "if_range": True})
    assert json.loads((tmp_path / "s.bin.part.json").read_text())["etag"] == '"v1"'
    f = run(server.url("/s.bin"), dest, None)
    assert dest.read_bytes() == PAYLOAD and f.sha256 == sha(PAYLOAD) and not f.pinned
    assert server.log[1:] == [("/s.bin", "bytes=3000-")]  # one request, for the rest only


@pytest.mark.parametrize(
    ("body", "last_modified", "pinned", "resumed"),
    [(NEW, LM1, False, False),  # rewritten, same Last-Modified (1 s resolution) and length: was spliced
     (PAYLOAD, LM1, False, False),  # unchanged, but nothing proves it: restarts all the same
     (NEW, LM2, False, False),  # modified (same length)
     (PAYLOAD + b"more", LM1, False, False),  # same Last-Modified but another length
     (PAYLOAD, LM1, True, True),  # pinned: resumed under If-Range, the sha256 decides at the end
     (NEW, LM2, True, False)],  # pinned, changed: the server ignores If-Range; its new Last-Modified restarts it
)
def test_without_a_strong_etag_an_unpinned_part_restarts(server, tmp_path: Path, body: bytes, last_modified: str,
                                                         pinned: bool, resumed: bool) -> None:
    dest = begin_part(server, tmp_path, "/m.bin", {"last_modified": LM1})  # the server ignores If-Range
    server.files["/m.bin"], server.validators["/m.bin"]["last_modified"] = body, last_modified
    f = run(server.url("/m.bin"), dest, sha(body) if pinned else None)
    assert dest.read_bytes() == body and f.sha256 == sha(body)
    if pinned:
        assert server.if_range[1] == LM1
        assert [r for _, r in server.log[1:]] == (["bytes=3000-"] if resumed else ["bytes=3000-", None])
    else:
        assert server.log[1:] == [("/m.bin", None)]  # no Range, no If-Range: restarted from zero
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_no_validator_unpinned_part_restarts(server, tmp_path: Path) -> None:
    dest = begin_part(server, tmp_path, "/n.bin", {})
    server.files["/n.bin"] = NEW  # a server without ETag or Last-Modified cannot prove it unchanged
    assert run(server.url("/n.bin"), dest, None).sha256 == sha(NEW) and dest.read_bytes() == NEW
    assert server.log[1:] == [("/n.bin", None)]  # no Range: restarted from zero
    # a hand-made .part (no validator file) of an unpinned source restarts too
    dest.with_name("h.bin.part").write_bytes(NEW[:100])
    server.files["/h.bin"] = PAYLOAD
    assert run(server.url("/h.bin"), tmp_path / "h.bin", None).sha256 == sha(PAYLOAD)
    assert server.log[-1] == ("/h.bin", None)


def test_file_changing_between_attempts_of_one_stage_run(server, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The stage command: the first attempt breaks, the server's file changes before the retry."""
    from fian_pipeline.common import run_stage
    from fian_pipeline.download import main

    server.files["/g.txt"], server.validators["/g.txt"] = PAYLOAD, {"etag": '"v1"'}
    server.modes["/g.txt"] = "truncate:3000:1"

    def change(hits: int) -> None:
        if hits == 2:
            server.files["/g.txt"], server.validators["/g.txt"]["etag"] = NEW, '"v2"'

    server.before["/g.txt"] = change
    params = tmp_path / "g.yaml"
    params.write_text(f"text:\n  glove:\n    name: g.txt\n    url: {server.url('/g.txt')}\n")
    out = tmp_path / "raw"
    assert run_stage(main, ["--params", str(params), "--kind", "glove", "--out", str(out), "--no-progress"]) == 0
    assert (out / "g.txt").read_bytes() == NEW and read_sums(out / "SHA256SUMS") == {"g.txt": sha(NEW)}
    assert [r for _, r in server.log] == [None, "bytes=3000-", None]
    assert "UNVERIFIED" in capsys.readouterr().err


@pytest.mark.parametrize("changed", [False, True])
def test_complete_part_is_kept_only_while_the_file_is_the_same(server, tmp_path: Path, changed: bool) -> None:
    """A .part holding the whole file (killed before the rename): HTTP 416 for the next byte."""
    dest = begin_part(server, tmp_path, "/w.bin", {"etag": '"v1"'})
    with open(tmp_path / "w.bin.part", "ab") as f:
        f.write(PAYLOAD[3000:])  # the rest arrived, then the process died
    if changed:
        server.files["/w.bin"], server.validators["/w.bin"]["etag"] = NEW, '"v2"'
    assert run(server.url("/w.bin"), dest, None).sha256 == sha(NEW if changed else PAYLOAD)
    assert [r for _, r in server.log[1:]] == ([f"bytes={len(PAYLOAD)}-", None] if changed else [f"bytes={len(PAYLOAD)}-"])


def test_git_blob_pin_verifies_a_file_without_sha256(server, tmp_path: Path) -> None:
    """A source pinned by its git blob id (ActivityNet-CD's train file): checked against `git hash-object`
    of the same bytes; a mismatch deletes the file and records nothing."""
    import subprocess

    body = b'{"v_a": {"duration": 10.0, "timestamps": [[1, 2]], "sentences": ["x"]}}\n'
    server.files["/t.json"] = body
    (tmp_path / "ref.json").write_bytes(body)
    blob = subprocess.run(["git", "hash-object", str(tmp_path / "ref.json")], capture_output=True, text=True,
                          check=True).stdout.strip()
    src = SimpleNamespace(name="t.json", url=server.url("/t.json"), sha256=None, git_blob_sha1=blob)
    (f,) = download_sources([src], tmp_path / "ok", backoff=0, progress=False)
    assert f.pinned and (tmp_path / "ok" / "t.json").read_bytes() == body
    assert read_sums(tmp_path / "ok" / "SHA256SUMS") == {"t.json": sha(body)}
    bad = SimpleNamespace(name="t.json", url=server.url("/t.json"), sha256=None, git_blob_sha1="0" * 40)
    with pytest.raises(ChecksumError, match=f"git blob id mismatch for t.json: expected {'0' * 40}, got {blob}"):
        download_sources([bad], tmp_path / "bad", backoff=0, progress=False)
    assert not (tmp_path / "bad" / "t.json").exists() and read_sums(tmp_path / "bad" / "SHA256SUMS") == {}
