"""Collection: upload a labelled folder, or download a ``place_id,url`` CSV, into ``raw/<place_id>/``.

Both are parallel, show progress, and are resumable: objects already in the bucket are skipped
(uploads are create-only, so a concurrent or repeated run never overwrites)."""

from __future__ import annotations

import csv
import hashlib
import ipaddress
import json
import mimetypes
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import certifi
from google.api_core import exceptions as gexc
from PIL import Image
from tqdm import tqdm
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError
from urllib3.response import BaseHTTPResponse

from placeid.catalog import PLACE_ID
from placeid.config import Settings
from placeid.store import storage_client
from placeid_edge.errors import BadRequest
from placeid_edge.imaging import ALLOWED_FORMATS, sniff_format

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".gif", ".bmp", ".tif", ".tiff", ".mpo"}


@dataclass
class TransferReport:
    """What a collection run did; ``failures`` holds one dict per item that failed, with a reason."""

    uploaded: int = 0
    skipped: int = 0
    failures: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def as_dict(self) -> dict:
        return {"uploaded": self.uploaded, "skipped": self.skipped, "failed": self.failed,
                "failures": self.failures}


def _upload_create_only(bucket, name: str, data_or_path, content_type: str | None, metadata: dict) -> bool:
    """Upload unless the object exists; True when uploaded, False when it was already there."""
    blob = bucket.blob(name)
    blob.metadata = metadata or None
    try:
        if isinstance(data_or_path, Path):
            blob.upload_from_filename(str(data_or_path), content_type=content_type, if_generation_match=0)
        else:
            blob.upload_from_string(data_or_path, content_type=content_type, if_generation_match=0)
    except gexc.PreconditionFailed:
        return False
    return True


def _run_parallel(items: list, work, workers: int, description: str, report: TransferReport,
                  show_progress: bool) -> TransferReport:
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(items), desc=description, unit="img", disable=not show_progress) as bar:
        futures = {pool.submit(work, item): item for item in items}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - one item never aborts the run
                outcome = {"item": repr(futures[future]), "reason": f"{type(exc).__name__}: {exc}"}
            if outcome is True:
                report.uploaded += 1
            elif outcome is False:
                report.skipped += 1
            else:
                report.failures.append(outcome)
            bar.update()
    return report


def labelled_files(folder: Path) -> list[tuple[str, Path]]:
    """``(place_id, file)`` for every image file in ``folder/<place_id>/``, sorted."""
    if not folder.is_dir():
        raise BadRequest(f"{folder} is not a folder")
    items = []
    for place_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not PLACE_ID.match(place_dir.name):
            raise BadRequest(f"folder {place_dir.name!r} is not a valid place id")
        items += [(place_dir.name, f) for f in sorted(place_dir.iterdir())
                  if f.is_file() and not f.name.startswith(".")]
    return items


def upload_folder(settings: Settings, folder: Path | str, workers: int = 8,
                  show_progress: bool = True, leave_out: frozenset[Path] = frozenset()) -> TransferReport:
    """Upload ``folder/<place_id>/<file>`` to ``raw/<place_id>/<file>``, skipping objects already there (and the
    files in ``leave_out``); ``folder/inbox/<file>`` goes to ``raw/inbox/``: unlabelled, for the model to label."""
    bucket = storage_client(settings.project).bucket(settings.bucket)
    items = [(place_id, path) for place_id, path in labelled_files(Path(folder)) if path not in leave_out]
    existing = {blob.name for blob in bucket.list_blobs(prefix=settings.raw_prefix)}

    def work(item):
        place_id, path = item
        name = f"{settings.raw_prefix}{place_id}/{path.name}"
        if name in existing:
            return False
        try:
            return _upload_create_only(bucket, name, path, mimetypes.guess_type(path.name)[0], {})
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            return {"file": str(path), "reason": repr(exc)}

    return _run_parallel(items, work, workers, "upload", TransferReport(), show_progress)


def read_url_list(csv_path: Path | str) -> list[tuple[int, str, str]]:
    """``(line, place_id, url)`` rows of a CSV (header ``place_id,url`` optional); a row without a URL
    keeps ``url=""`` so that it is reported, not dropped."""
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for row in reader:
            cells = [c.strip() for c in row[:2]]
            if not cells or not any(cells) or cells[0].startswith("#") or cells == ["place_id", "url"]:
                continue
            rows.append((reader.line_num, cells[0], cells[1] if len(cells) > 1 else ""))
    return rows


def _object_name(settings: Settings, place_id: str, url: str, content_type: str | None) -> str:
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    if suffix not in _IMAGE_SUFFIXES:
        suffix = mimetypes.guess_extension((content_type or "").split(";")[0].strip()) or ".img"
    return f"{settings.raw_prefix}{place_id}/{hashlib.sha256(url.encode()).hexdigest()[:20]}{suffix}"


# -- downloading one URL safely ---------------------------------------------------------------------

class FetchError(ValueError):
    """A download refused or failed; the message is the reason reported for its row."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressCheck = Callable[[IPAddress], str | None]

_REFUSED_NAMES = {"localhost", "metadata", "metadata.google.internal"}
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024


def address_refusal(address: str | IPAddress) -> str | None:
    """Why ``address`` is no public unicast address to download from, or None when it is one.
    IPv6 forms embedding an IPv4 address (IPv4-mapped, 6to4) are judged by the embedded address."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and (embedded := ip.ipv4_mapped or ip.sixtofour) is not None:
        reason = address_refusal(embedded)
        return reason and f"{ip} embeds {reason}"
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "site_local", "private"):
        if getattr(ip, f"is_{kind}", False):
            return f"{ip} is not a public address ({kind.replace('_', '-')})"
    return None if ip.is_global else f"{ip} is not a public address (special-purpose range)"


def _parse_url(url: str) -> tuple[SplitResult, str, int]:
    """(parts, host, port) of an http(s) URL; FetchError for anything else."""
    if not url:
        raise FetchError("no URL in the row")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise FetchError(f"malformed URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme {parts.scheme!r}")
    if not parts.hostname:
        raise FetchError("malformed URL: no host")
    return parts, parts.hostname.rstrip("."), port


def _resolve(host: str, port: int, check: AddressCheck | None) -> list[str]:
    """Every address of ``host``; with a ``check``, each one must pass it (one refused refuses the host)."""
    if check is not None and (host in _REFUSED_NAMES or host.endswith(".localhost")):
        raise FetchError(f"refused host name {host!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if check is not None and (reason := check(ipaddress.ip_address(address))):
            raise FetchError(f"refused address of {host!r}: {reason}")
    return addresses


class _Watchdog:
    """Enforces one deadline on a whole download: when it passes, the current socket is shut down, so
    that a blocked connect, TLS handshake or read (a server dripping bytes) fails at once."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.conn: HTTPConnection | None = None
        self.sock: socket.socket | None = None  # kept: http.client lets go of conn.sock on Connection: close
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._cut)
        self._timer.daemon = True

    def left(self) -> float:
        return max(0.001, self.deadline - time.monotonic())

    def passed(self) -> bool:
        return time.monotonic() >= self.deadline

    def _cut(self) -> None:
        for sock in (self.sock, self.conn.sock if self.conn else None):
            if sock is not None:
                with suppress(OSError):  # the plain socket's shutdown, under any TLS layer
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def __enter__(self) -> "_Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()


def _connect(scheme: str, host: str, port: int, addresses: list[str], watchdog: _Watchdog,
             ca_certs: str | None) -> HTTPConnection:
    """A connection to the first of the checked ``addresses`` that answers (never a fresh DNS answer);
    for https, SNI and certificate verification use ``host``."""
    error: Exception | None = None
    for address in addresses:
        if scheme == "https":
            conn = HTTPSConnection(address, port, timeout=watchdog.left(), server_hostname=host,
                                   cert_reqs="CERT_REQUIRED", ca_certs=ca_certs or certifi.where())
        else:
            conn = HTTPConnection(address, port, timeout=watchdog.left())
        watchdog.conn = conn
        try:
            conn.connect()
        except (OSError, Urllib3Error) as exc:
            conn.close()
            error = exc
            continue
        watchdog.sock = conn.sock
        return conn
    raise FetchError(f"cannot connect to {host!r}: {error}")


def _image_type(content_type: str) -> str | None:
    """The accepted image media type of a Content-Type header, or None for application/octet-stream
    (to be sniffed); FetchError for anything else."""
    media = content_type.split(";")[0].strip().lower()
    if media.startswith("image/") and media != "image/svg+xml":
        return media
    if media == "application/octet-stream":
        return None
    raise FetchError(f"content type {content_type or 'missing'!r} is not an image")


def _read_limited(response: BaseHTTPResponse, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"too large: {declared} bytes declared > limit {max_bytes}")
    body = bytearray()
    for chunk in response.stream(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(f"too large: more than {max_bytes} bytes")
    if not body:
        raise FetchError("empty response body")
    return bytes(body)


def _get_once(url: str, watchdog: _Watchdog, max_bytes: int, check: AddressCheck | None,
              ca_certs: str | None) -> tuple[str | None, bytes, str]:
    """One GET: (redirect location, b"", "") or (None, body, image content type)."""
    parts, host, port = _parse_url(url)
    conn = _connect(parts.scheme, host, port, _resolve(host, port, check), watchdog, ca_certs)
    headers = {"Host": parts.netloc.rpartition("@")[2], "Accept": "image/*", "Accept-Encoding": "identity",
               "User-Agent": "placeid-collect"}
    try:
        conn.request("GET", urlunsplit(("", "", parts.path or "/", parts.query, "")), headers=headers,
                     preload_content=False, decode_content=False)
        with conn.getresponse() as response:
            if response.status in _REDIRECTS:
                if not (location := response.headers.get("Location")):
                    raise FetchError(f"HTTP {response.status} without a Location")
                return location, b"", ""
            if response.status != 200:
                raise FetchError(f"HTTP {response.status}")
            if response.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise FetchError(f"unsupported Content-Encoding {response.headers['Content-Encoding']!r}")
            media = _image_type(response.headers.get("Content-Type", ""))
            body = _read_limited(response, max_bytes)
    finally:
        conn.close()
    if watchdog.passed():  # the watchdog may have ended a read-until-close body early
        raise TimeoutError
    if media is None:
        sniffed = sniff_format(body)
        if sniffed not in ALLOWED_FORMATS:
            raise FetchError(f"content type 'application/octet-stream' and the bytes are no accepted image "
                             f"(sniffed: {sniffed or 'unknown'})")
        media = Image.MIME.get(sniffed, "application/octet-stream")
    return None, body, media


def fetch_limited(url: str, timeout_s: float, max_bytes: int, *, check_address: AddressCheck | None = address_refusal,
                  max_redirects: int = 5, ca_certs: str | None = None) -> tuple[bytes, str]:
    """Download one image: http(s) only; every hop's host resolved once, all its addresses passed by
    ``check_address`` (None: any address) and the connection made to a checked address; at most
    ``max_redirects`` redirects; connect + all reads within ``timeout_s`` seconds in total; at most
    ``max_bytes``; an image content type. Returns (body, media type); raises FetchError with the reason."""
    watchdog = _Watchdog(time.monotonic() + timeout_s)
    try:
        with watchdog:
            for _hop in range(max_redirects + 1):
                location, body, media = _get_once(url, watchdog, max_bytes, check_address, ca_certs)
                if location is None:
                    return body, media
                url = urljoin(url, location)
            raise FetchError(f"too many redirects (more than {max_redirects})")
    except Exception as exc:
        if watchdog.passed() or isinstance(exc, (TimeoutError, ReadTimeoutError)):
            raise FetchError(f"deadline exceeded: download not complete within {timeout_s:g} s") from None
        if isinstance(exc, FetchError):
            raise
        raise FetchError(f"{type(exc).__name__}: {exc}") from None


def collect_urls(settings: Settings, csv_path: Path | str, workers: int = 8, timeout_s: float = 15.0,
                 max_bytes: int | None = None, report_path: Path | str | None = None,
                 show_progress: bool = True, allow_private_addresses: bool = False,
                 max_redirects: int = 5) -> TransferReport:
    """Download each ``place_id,url`` row into ``raw/<place_id>/<sha256(url)>.<ext>`` with
    :func:`fetch_limited` (``timeout_s`` is the deadline per download). Only public addresses are
    fetched unless ``allow_private_addresses`` (a local demo or test server). Every row has an outcome:
    uploaded, skipped (already collected) or a failure with its reason (also written to ``report_path``
    as JSON when given); no row ends the run."""
    max_bytes = max_bytes or settings.max_object_bytes
    check = None if allow_private_addresses else address_refusal
    bucket = storage_client(settings.project).bucket(settings.bucket)
    rows = read_url_list(csv_path)
    existing_stems = {PurePosixPath(b.name).with_suffix("").as_posix()
                      for b in bucket.list_blobs(prefix=settings.raw_prefix)}

    def work(row: tuple[int, str, str]):
        line, place_id, url = row
        failure = {"line": line, "place_id": place_id, "url": url}
        if not PLACE_ID.match(place_id):
            return failure | {"reason": "invalid place id"}
        try:
            _parse_url(url)
            if PurePosixPath(_object_name(settings, place_id, url, None)).with_suffix("").as_posix() in existing_stems:
                return False
            body, media = fetch_limited(url, timeout_s, max_bytes, check_address=check, max_redirects=max_redirects)
            name = _object_name(settings, place_id, url, media)
            return _upload_create_only(bucket, name, body, media, {"source_url": url, "place_id": place_id})
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its reason
            return failure | {"reason": str(exc) if isinstance(exc, FetchError) else f"{type(exc).__name__}: {exc}"}

    report = _run_parallel(rows, work, workers, "collect", TransferReport(), show_progress)
    if report_path:
        Path(report_path).write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
    return report
