"""Helpers for the serving tests: put a real bundle into the registry and make photos to send."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image

from placeid.registry import Registry
from placeid_edge.bundle import bundle_files


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
