"""Collection into the bucket: folder upload (parallel, resumable) and the URL collector against real
HTTP(S) servers on 127.0.0.1: public-address rule on every hop, one deadline per download, size limits,
image content types and a failure report with one outcome per row. No traffic leaves loopback: refused
addresses are only ever classified, never connected to."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import socket
import ssl
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from placeid.collect import FetchError, address_refusal, collect_urls, fetch_limited, upload_folder


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
        self.server.paths.append(self.path)
        path = urlsplit(self.path).path
        if path.startswith("/photo"):
            self._send(200, self.photo, "image/jpeg")
        elif path == "/octet":
            self._send(200, self.photo, "application/octet-stream")
        elif path == "/octet-junk":
            self._send(200, b"MZ\x90\x00" * 100, "application/octet-stream")
        elif path == "/page":
            self._send(200, b"<html>not a photo</html>", "text/html; charset=utf-8")
        elif path == "/svg":
            self._send(200, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(urlsplit(self.path).query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/huge":
            self._send(200, b"\xff" * 300_000, "image/jpeg")
        elif path == "/huge-undeclared":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"\xff" * 10_000)
        elif path == "/slow":
            time.sleep(3)
            self._send(200, self.photo, "image/jpeg")
        elif path == "/drip-body":  # every read returns within 0.2 s, the body takes 8 s
            self._drip(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 40\r\n\r\n", b"\xff" * 40)
        elif path == "/drip-headers":
            self._drip(b"", b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nX-Pad: " + b"a" * 30)
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, prefix, dripped):
        try:
            self.wfile.write(prefix)
            for byte in dripped:
                self.wfile.write(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            pass  # the client gave up

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    """Records every accepted connection and every request path."""

    def __init__(self, *args):
        super().__init__(*args)
        self.connections = 0
        self.paths: list[str] = []

    def verify_request(self, request, client_address):
        self.connections += 1
        return True

    def handle_error(self, request, client_address):
        pass  # a client that gave up (deadline, size limit) breaks the pipe: expected here


def _serve(tls: ssl.SSLContext | None = None):
    server = _Server(("127.0.0.1", 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def server(world30_photos):
    _Handler.photo = world30_photos["petra"][0].read_bytes()
    server = _serve()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def photo_server(server):
    return f"http://127.0.0.1:{server.server_port}"


def _write_csv(path, rows):
    path.write_text("place_id,url\n" + "".join(f"{place},{url}\n" for place, url in rows))
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_collect_urls_every_row_has_an_outcome(settings, bucket, photo_server, scratch_dir):
    redirected = f"{photo_server}/redirect?to=/photo4.jpg"
    unreachable = f"http://127.0.0.1:{_closed_port()}/photo.jpg"
    csv_path = _write_csv(scratch_dir / "urls.csv", [
        ("petra", f"{photo_server}/photo1.jpg"),
        ("louvre", f"{photo_server}/photo2"),
        ("petra", f"{photo_server}/octet"),
        ("petra", redirected),
        ("petra", f"{photo_server}/missing.jpg"),
        ("petra", f"{photo_server}/huge"),
        ("petra", f"{photo_server}/huge-undeclared"),
        ("petra", f"{photo_server}/slow"),
        ("petra", f"{photo_server}/page"),
        ("petra", f"{photo_server}/svg"),
        ("petra", f"{photo_server}/octet-junk"),
        ("petra", "http://[::1/x.jpg"),
        ("petra", "file:///etc/passwd"),
        ("petra", "ftp://x"),
        ("petra", unreachable),
        ("Not A Place", f"{photo_server}/photo3.jpg"),
    ])
    with csv_path.open("a") as handle:
        handle.write("petra\n")  # a row without a URL
    report_path = scratch_dir / "report.json"
    started = time.monotonic()
    report = collect_urls(settings, csv_path, workers=4, timeout_s=1.0, max_bytes=200_000, report_path=report_path,
                          show_progress=False, allow_private_addresses=True)
    assert time.monotonic() - started < 10
    assert report.uploaded == 4
    reasons = {f["url"]: f["reason"] for f in report.failures}
    assert reasons.pop(f"{photo_server}/missing.jpg") == "HTTP 404"
    assert reasons.pop(f"{photo_server}/huge").startswith("too large: 300000 bytes declared")
    assert "too large" in reasons.pop(f"{photo_server}/huge-undeclared")
    assert "deadline exceeded" in reasons.pop(f"{photo_server}/slow")
    assert "'text/html; charset=utf-8' is not an image" in reasons.pop(f"{photo_server}/page")
    assert "'image/svg+xml' is not an image" in reasons.pop(f"{photo_server}/svg")
    assert "no accepted image" in reasons.pop(f"{photo_server}/octet-junk")
    assert reasons.pop("http://[::1/x.jpg").startswith("malformed URL")
    assert reasons.pop("file:///etc/passwd") == "unsupported URL scheme 'file'"
    assert reasons.pop("ftp://x") == "unsupported URL scheme 'ftp'"
    assert reasons.pop(unreachable).startswith("cannot connect to '127.0.0.1'")
    assert reasons.pop(f"{photo_server}/photo3.jpg") == "invalid place id"
    assert reasons.pop("") == "no URL in the row"
    assert reasons == {}
    written = json.loads(report_path.read_text())
    assert written["failed"] == 13 and all(f["line"] > 1 for f in written["failures"])
    blobs = {b.name: b for b in bucket.list_blobs(prefix="raw/")}
    assert {name.split("/")[1] for name in blobs} == {"petra", "louvre"}
    louvre = next(b for n, b in blobs.items() if n.startswith("raw/louvre/"))
    assert louvre.name.endswith(".jpg")  # extension from the Content-Type
    assert louvre.metadata["source_url"].endswith("/photo2")
    octet = next(b for b in blobs.values() if b.metadata["source_url"].endswith("/octet"))
    assert octet.content_type == "image/jpeg"  # sniffed
    via_redirect = next(b for b in blobs.values() if b.metadata["source_url"] == redirected)
    assert via_redirect.download_as_bytes() == _Handler.photo
    again = collect_urls(settings, csv_path, workers=4, timeout_s=1.0, max_bytes=200_000, show_progress=False,
                         allow_private_addresses=True)
    assert again.uploaded == 0 and again.skipped == 4 and again.failed == 13


def test_private_addresses_refused_without_a_connection(settings, bucket, server, scratch_dir):
    port = server.server_port
    urls = [f"http://127.0.0.1:{port}/photo1.jpg", f"http://localhost:{port}/photo1.jpg",
            f"http://[::ffff:127.0.0.1]:{port}/photo1.jpg", f"http://0.0.0.0:{port}/photo1.jpg",
            f"http://[::1]:{port}/photo1.jpg", f"http://2130706433:{port}/photo1.jpg",
            f"http://127.1:{port}/photo1.jpg"]
    csv_path = _write_csv(scratch_dir / "urls.csv", [("petra", url) for url in urls])
    report = collect_urls(settings, csv_path, workers=4, timeout_s=2.0, show_progress=False)
    assert (report.uploaded, report.failed) == (0, len(urls))
    reasons = {f["url"]: f["reason"] for f in report.failures}
    assert all(reason.startswith(("refused address", "refused host name")) for reason in reasons.values()), reasons
    assert "127.0.0.1 is not a public address (loopback)" in reasons[urls[0]]
    assert "::ffff:7f00:1 embeds 127.0.0.1 is not a public address (loopback)" in reasons[urls[2]]
    assert "0.0.0.0 is not a public address (unspecified)" in reasons[urls[3]]
    assert server.connections == 0 and server.paths == []
    assert list(bucket.list_blobs(prefix="raw/")) == []


NON_PUBLIC = ["127.0.0.1", "127.9.9.9", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
              "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "198.18.0.1", "192.0.2.1", "::1", "::",
              "fe80::1", "fe80::1%lo", "fc00::1", "fd00:ec2::254", "fec0::1", "ff02::1", "2001:db8::1",
              "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::", "2002:a9fe:a9fe::1",
              "64:ff9b::7f00:1", "::7f00:1"]
PUBLIC = ["8.8.8.8", "151.101.1.69", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]


def test_address_classifier():
    """Literal addresses only: nothing is connected to."""
    assert [a for a in NON_PUBLIC if address_refusal(a) is None] == []
    assert {a: address_refusal(a) for a in PUBLIC} == dict.fromkeys(PUBLIC)
    assert address_refusal("169.254.169.254") == "169.254.169.254 is not a public address (link-local)"
    assert address_refusal("100.64.0.1") == "100.64.0.1 is not a public address (special-purpose range)"
    assert address_refusal("::ffff:10.0.0.1") == "::ffff:a00:1 embeds 10.0.0.1 is not a public address (private)"


def test_every_redirect_hop_is_checked(server):
    """127.0.0.1 stands in for a public server here; each redirect target is checked by the real rule and
    refused before any connection (targets are loopback forms, so nothing could leave this machine)."""
    port = server.server_port
    only_this_server = {ipaddress.ip_address("127.0.0.1")}

    def check(ip):
        return None if ip in only_this_server else address_refusal(ip)

    targets = [f"http://[::ffff:127.0.0.1]:{port}/photo1.jpg", f"http://[::1]:{port}/photo1.jpg",
               f"http://localhost:{port}/photo1.jpg", f"http://0.0.0.0:{port}/photo1.jpg", "file:///etc/passwd"]
    for target in targets:
        with pytest.raises(FetchError, match="refused|unsupported URL scheme"):
            fetch_limited(f"http://127.0.0.1:{port}/redirect?to={target}", 2.0, 200_000, check_address=check)
    assert [urlsplit(p).path for p in server.paths] == ["/redirect"] * len(targets)
    assert server.connections == len(targets)
    body, media = fetch_limited(f"http://127.0.0.1:{port}/redirect?to=/photo5.jpg", 2.0, 200_000, check_address=check)
    assert (body, media) == (_Handler.photo, "image/jpeg")


def test_redirect_loop_is_bounded(settings, server, photo_server, scratch_dir):
    csv_path = _write_csv(scratch_dir / "urls.csv", [("petra", f"{photo_server}/loop")])
    report = collect_urls(settings, csv_path, timeout_s=5.0, show_progress=False, allow_private_addresses=True,
                          max_redirects=5)
    assert report.failures[0]["reason"] == "too many redirects (more than 5)"
    assert server.paths == ["/loop"] * 6


def test_dripping_server_is_cut_off_at_the_deadline(settings, photo_server, scratch_dir):
    csv_path = _write_csv(scratch_dir / "urls.csv", [("petra", f"{photo_server}/drip-body"),
                                                     ("petra", f"{photo_server}/drip-headers")])
    started = time.monotonic()
    report = collect_urls(settings, csv_path, workers=2, timeout_s=1.0, show_progress=False,
                          allow_private_addresses=True)
    elapsed = time.monotonic() - started
    assert report.failed == 2 and elapsed < 2.5, (elapsed, report.failures)
    assert all(f["reason"] == "deadline exceeded: download not complete within 1 s" for f in report.failures)


def _self_signed_tls(folder, host_name):
    """A server TLS context with a self-signed certificate for ``host_name``, and its certificate file."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, host_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host_name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, str(cert_path)


def test_https_connects_to_the_checked_address_and_verifies_the_host_name(world30_photos, scratch_dir):
    """The connection goes to the resolved address while SNI and certificate verification use the URL's
    host name: the certificate for 'localhost' is accepted via localhost and refused via 127.0.0.1."""
    _Handler.photo = world30_photos["petra"][0].read_bytes()
    context, ca_file = _self_signed_tls(scratch_dir, "localhost")
    server = _serve(context)
    try:
        port = server.server_port
        body, media = fetch_limited(f"https://localhost:{port}/photo1.jpg", 5.0, 200_000, check_address=None,
                                    ca_certs=ca_file)
        assert (body, media) == (_Handler.photo, "image/jpeg")
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED|match"):
            fetch_limited(f"https://127.0.0.1:{port}/photo1.jpg", 5.0, 200_000, check_address=None, ca_certs=ca_file)
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch_limited(f"https://localhost:{port}/photo1.jpg", 5.0, 200_000, check_address=None)  # public CAs
    finally:
        server.shutdown()
        server.server_close()
