"""Collection: upload a labelled folder, or download a ``place_id,url`` CSV, into ``raw/<place_id>/``.

Both are parallel, show progress, and are resumable: objects already in the bucket are skipped
(uploads are create-only, so a concurrent or repeated run never overwrites)."""

from __future__ import annotations

import csv
import hashlib
import json
import mimetypes
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import requests
from google.api_core import exceptions as gexc
from tqdm import tqdm

from placeid.config import Settings
from placeid_edge.errors import BadRequest
from placeid.store import storage_client

_PLACE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
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
            outcome = future.result()
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
        if not _PLACE_ID.match(place_dir.name):
            raise BadRequest(f"folder {place_dir.name!r} is not a valid place id")
        items += [(place_dir.name, f) for f in sorted(place_dir.iterdir())
                  if f.is_file() and not f.name.startswith(".")]
    return items


def upload_folder(settings: Settings, folder: Path | str, workers: int = 8,
                  show_progress: bool = True) -> TransferReport:
    """Upload ``folder/<place_id>/<file>`` to ``raw/<place_id>/<file>``, skipping objects already there."""
    bucket = storage_client(settings.project).bucket(settings.bucket)
    items = labelled_files(Path(folder))
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


def read_url_list(csv_path: Path | str) -> list[tuple[str, str]]:
    """``(place_id, url)`` rows of a CSV (header ``place_id,url`` optional)."""
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if not row or row[0].strip().startswith("#") or [c.strip() for c in row[:2]] == ["place_id", "url"]:
                continue
            if len(row) < 2:
                raise BadRequest(f"{csv_path}: expected 'place_id,url', got {row!r}")
            rows.append((row[0].strip(), row[1].strip()))
    return rows


def _object_name(settings: Settings, place_id: str, url: str, content_type: str | None) -> str:
    suffix = PurePosixPath(urlparse(url).path).suffix.lower()
    if suffix not in _IMAGE_SUFFIXES:
        suffix = mimetypes.guess_extension((content_type or "").split(";")[0].strip()) or ".img"
    return f"{settings.raw_prefix}{place_id}/{hashlib.sha256(url.encode()).hexdigest()[:20]}{suffix}"


def fetch_limited(session: requests.Session, url: str, timeout_s: float, max_bytes: int) -> tuple[bytes, str | None]:
    """GET ``url`` with a timeout, refusing bodies over ``max_bytes``; returns (body, content type)."""
    scheme = urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {scheme!r}")
    with session.get(url, stream=True, timeout=timeout_s) as response:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise ValueError(f"too large: {declared} bytes declared > limit {max_bytes}")
        body = bytearray()
        for chunk in response.iter_content(64 * 1024):
            body += chunk
            if len(body) > max_bytes:
                raise ValueError(f"too large: more than {max_bytes} bytes")
        if not body:
            raise ValueError("empty response body")
        return bytes(body), response.headers.get("Content-Type")


def collect_urls(settings: Settings, csv_path: Path | str, workers: int = 8, timeout_s: float = 15.0,
                 max_bytes: int | None = None, report_path: Path | str | None = None,
                 show_progress: bool = True) -> TransferReport:
    """Download each ``place_id,url`` row into ``raw/<place_id>/<sha256(url)>.<ext>``; failures are reported
    (and written to ``report_path`` as JSON when given), never fatal. Already-collected URLs are skipped."""
    max_bytes = max_bytes or settings.max_object_bytes
    bucket = storage_client(settings.project).bucket(settings.bucket)
    rows = read_url_list(csv_path)
    existing_stems = {PurePosixPath(b.name).with_suffix("").as_posix()
                      for b in bucket.list_blobs(prefix=settings.raw_prefix)}
    session = requests.Session()

    def work(row):
        place_id, url = row
        if not _PLACE_ID.match(place_id):
            return {"place_id": place_id, "url": url, "reason": "invalid place id"}
        if PurePosixPath(_object_name(settings, place_id, url, None)).with_suffix("").as_posix() in existing_stems:
            return False
        try:
            body, content_type = fetch_limited(session, url, timeout_s, max_bytes)
            name = _object_name(settings, place_id, url, content_type)
            return _upload_create_only(bucket, name, body, content_type, {"source_url": url, "place_id": place_id})
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its reason
            reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            return {"place_id": place_id, "url": url, "reason": reason}

    report = _run_parallel(rows, work, workers, "collect", TransferReport(), show_progress)
    if report_path:
        Path(report_path).write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
    return report
