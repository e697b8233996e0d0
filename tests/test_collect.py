"""Collection into the bucket: folder upload (parallel, resumable) and the URL collector against a real
local HTTP server, with timeouts, size limits and a failure report."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from placeid.collect import collect_urls, upload_folder


@pytest.fixture
def labelled_folder(scratch_dir, world30_photos):
    """A <place_id>/<file> folder of symlinks to real photos (nothing is copied)."""
    for place in ("petra", "louvre"):
        (scratch_dir / place).mkdir()
        for path in world30_photos[place][:4]:
            (scratch_dir / place / path.name).symlink_to(path)
    return scratch_dir


def test_upload_folder_is_resumable(settings, bucket, labelled_folder):
    first = upload_folder(settings, labelled_folder, workers=4, show_progress=False)
    assert (first.uploaded, first.skipped, first.failed) == (8, 0, 0)
    names = sorted(b.name for b in bucket.list_blobs(prefix="raw/"))
    assert len(names) == 8 and all(n.startswith(("raw/petra/", "raw/louvre/")) for n in names)
    bucket.blob(names[0]).delete()  # an interrupted run
    second = upload_folder(settings, labelled_folder, workers=4, show_progress=False)
    assert (second.uploaded, second.skipped, second.failed) == (1, 7, 0)


class _Handler(http.server.BaseHTTPRequestHandler):
    photo = b""

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.startswith("/photo"):
            self._send(200, self.photo, "image/jpeg")
        elif self.path == "/huge":
            self._send(200, b"\xff" * 300_000, "image/jpeg")
        elif self.path == "/huge-undeclared":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"\xff" * 10_000)
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, self.photo, "image/jpeg")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def photo_server(world30_photos):
    _Handler.photo = world30_photos["petra"][0].read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_collect_urls_with_failures_reported(settings, bucket, photo_server, scratch_dir):
    csv_path = scratch_dir / "urls.csv"
    csv_path.write_text("place_id,url\n"
                        f"petra,{photo_server}/photo1.jpg\n"
                        f"louvre,{photo_server}/photo2\n"
                        f"petra,{photo_server}/missing.jpg\n"
                        f"petra,{photo_server}/huge\n"
                        f"petra,{photo_server}/huge-undeclared\n"
                        f"petra,{photo_server}/slow\n"
                        "petra,ftp://example.invalid/x.jpg\n"
                        f"Not A Place,{photo_server}/photo3.jpg\n")
    report_path = scratch_dir / "report.json"
    report = collect_urls(settings, csv_path, workers=4, timeout_s=1.0, max_bytes=200_000,
                          report_path=report_path, show_progress=False)
    assert report.uploaded == 2
    reasons = {f["url"].rsplit("/", 1)[-1]: f["reason"] for f in report.failures}
    assert reasons["missing.jpg"] == "HTTP 404"
    assert "too large" in reasons["huge"] and "too large" in reasons["huge-undeclared"]
    assert "Timeout" in reasons["slow"]
    assert "unsupported URL scheme" in reasons["x.jpg"]
    assert reasons["photo3.jpg"] == "invalid place id"
    assert json.loads(report_path.read_text())["failed"] == 6
    blobs = {b.name: b for b in bucket.list_blobs(prefix="raw/")}
    assert {name.split("/")[1] for name in blobs} == {"petra", "louvre"}
    louvre = next(b for n, b in blobs.items() if n.startswith("raw/louvre/"))
    assert louvre.name.endswith(".jpg")  # extension from the Content-Type
    assert louvre.metadata["source_url"].endswith("/photo2")
    again = collect_urls(settings, csv_path, workers=4, timeout_s=1.0, max_bytes=200_000, show_progress=False)
    assert again.uploaded == 0 and again.skipped == 2
