"""Downloads against a local HTTP server: resume, retries, checksums, errors, archives, the stage."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
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
        mode = srv.modes.get(self.path, "")  # type: ignore[attr-defined]
        hits = sum(1 for p, _ in srv.log if p == self.path)  # type: ignore[attr-defined]
        if mode == "404" or self.path not in srv.files:  # type: ignore[attr-defined]
            self.send_error(404, "Not Found")
            return
        if mode == "500" or (mode.startswith("fail_first:") and hits <= int(mode.split(":")[1])):
            self.send_error(500, "Server Error")
            return
        body = srv.files[self.path]  # type: ignore[attr-defined]
        start = 0
        rng = self.headers.get("Range")
        if rng and mode != "norange":
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        part = body[start:]
        self.send_header("Content-Length", str(len(part)))
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
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield SimpleNamespace(httpd=httpd, url=lambda p: base + p, files=httpd.files, modes=httpd.modes,
                          log=httpd.log)
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.bin.part"]  # never the target itself
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
