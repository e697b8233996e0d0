"""Helpers for the serving tests: put a real bundle into the registry and make photos to send."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import requests
from PIL import Image

from placeid.registry import Registry
from placeid_edge.bundle import bundle_files

#: How often the test predict servers re-read the serving pointer (seconds).
REFRESH_S = 0.5


def publish(db, bucket, run_dir: Path, scratch: Path, version: str | None = None, force: bool = False,
            manifest_changes: dict | None = None) -> str:
    """Register the bundle files of ``run_dir`` (as ``version`` when given: a copy whose manifest names it,
    with ``manifest_changes`` applied) and promote it; returns the version now served."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    copy = scratch / f"bundle-{version or manifest['version']}"
    copy.mkdir(parents=True, exist_ok=True)
    for name in bundle_files(manifest):
        shutil.copy(run_dir / name, copy / name)
    manifest["version"] = version or manifest["version"]
    manifest.update(manifest_changes or {})
    manifest["files"] = {name: digest for name, digest in manifest["files"].items() if (copy / name).exists()}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    registry = Registry(db, bucket)
    registry.register(copy)
    return registry.promote(manifest["version"], force=force)["version"]


def jpeg_bytes(size: tuple[int, int] = (320, 240), color=(120, 140, 160)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def wait_for_version(url: str, version: str, timeout_s: float = 15.0) -> dict:
    """Wait until the predict function at ``url`` serves ``version``; its status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = requests.get(f"{url}/v1/models/placeid", timeout=10)
        if response.status_code == 200 and response.json()["model_version_status"][0]["version"] == version:
            return response.json()
        time.sleep(0.1)
    raise AssertionError(f"the function did not switch to {version} within {timeout_s}s")
