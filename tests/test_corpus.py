"""Every bad or odd input gets its expected outcome: rejected with a reason, or accepted and normalised."""

from __future__ import annotations

import io

import numpy as np
from functions_framework import create_app
from PIL import Image

from placeid.config import REPO_ROOT
from tests.corpus import build_cases
from tests.events import post_event, storage_event, upload

SOURCE = str(REPO_ROOT / "functions" / "ingest" / "main.py")


def _curated(bucket, record) -> Image.Image:
    return Image.open(io.BytesIO(bucket.blob(record["curated"]["path"]).download_as_bytes()))


def _red_corner(image: Image.Image) -> str:
    """Which corner holds the red marker after orientation."""
    arr = np.asarray(image.convert("RGB"), dtype=int)
    h, w = arr.shape[:2]
    corners = {"top-left": arr[: h // 10, : w // 10], "top-right": arr[: h // 10, -w // 10:],
               "bottom-left": arr[-h // 10:, : w // 10], "bottom-right": arr[-h // 10:, -w // 10:]}
    return max(corners, key=lambda k: corners[k][..., 0].mean() - corners[k][..., 1:].mean())


# Where the top-left red marker of the stored pixels ends up once the EXIF orientation is applied.
ORIENTED_CORNER = {2: "top-right", 3: "bottom-right", 4: "bottom-left", 5: "top-left", 6: "top-right",
                   7: "bottom-right", 8: "bottom-left"}


def test_corpus_of_bad_and_odd_inputs(catalog, db, bucket, world30_photos):
    photos = [paths[0] for paths in world30_photos.values()]
    cases, originals = build_cases(photos)
    assert len(cases) >= 35
    client = create_app(target="ingest", source=SOURCE).test_client()
    for case in cases:
        resource = upload(bucket, f"raw/eiffel-tower/{case.name}", case.data, content_type=case.content_type)
        assert post_event(client, storage_event(resource)).status_code == 200, case.name
    records = {snap.get("file_name"): snap.to_dict() for snap in db.collection("images").stream()}
    failures = []
    for case in cases:
        record = records[case.name]
        if record["status"] != case.status or (case.reason and case.reason not in (record["reason"] or "")):
            failures.append(f"{case.name}: {record['status']} ({record['reason']}), expected {case.status} "
                            f"({case.reason})")
        if case.format and record.get("format") != case.format:
            failures.append(f"{case.name}: format {record.get('format')}, expected {case.format}")
    assert not failures, "\n".join(failures)

    for case in cases:
        record = records[case.name]
        if case.status != "accepted":
            assert "curated" not in record
            continue
        image = _curated(bucket, record)
        assert image.format == "JPEG" and image.mode == "RGB", case.name
        assert not image.getexif(), case.name
        if case.check == "red":
            r, g, b = np.asarray(image).reshape(-1, 3).mean(axis=0)
            assert r > 200 and g < 60 and b < 60, (case.name, r, g, b)
        elif case.check == "grey16":
            # 16-bit samples scaled back to 8 bits, not clipped to white.
            assert np.abs(np.asarray(image.convert("L"), dtype=int) - originals["grey16"].astype(int)).mean() < 4
        elif case.check == "rgb16":
            assert np.abs(np.asarray(image, dtype=int) - originals["rgb16"].astype(int)).mean() < 4
        elif case.check == "white-left":
            arr = np.asarray(image, dtype=int)
            half = arr.shape[1] // 2
            assert arr[:, : half - 8].mean() > 252  # the transparent half, composited over white
            assert arr[:, half + 8:].mean() < 200  # the photo half keeps its colours
        elif case.check == "large":  # decoded at 1/4 scale (within the pixel limit), curated at the size cap
            assert (record["width"], record["height"]) == (7200, 5400) and image.size == (1024, 768)
            assert record["hashed_size"] == [1800, 1350]
        elif case.check == "no-exif":
            assert len(bucket.blob(record["curated"]["path"]).download_as_bytes()) < 40000
        elif case.check and case.check.startswith("orientation-"):
            orientation = int(case.check.split("-")[1])
            assert record["exif_orientation"] == orientation
            swapped = orientation >= 5
            assert (record["width"], record["height"]) == ((120, 160) if swapped else (160, 120))
            assert _red_corner(image) == ORIENTED_CORNER[orientation], case.name


def test_camera_originals_are_all_ingested(catalog, db, bucket, data_dir):
    """The real camera originals (EXIF, PNG with alpha, WebP named .jpg, several thousand px) all decode;
    none is rejected, and every curated copy respects the size cap."""
    originals = sorted(p for p in (data_dir / "world30-originals").glob("*/*") if p.is_file())
    assert len(originals) > 150
    client = create_app(target="ingest", source=SOURCE).test_client()
    for path in originals:
        resource = upload(bucket, f"raw/{path.parent.name}/{path.name}", path.read_bytes())
        assert post_event(client, storage_event(resource)).status_code == 200, path
    records = [snap.to_dict() for snap in db.collection("images").stream()]
    assert len(records) == len(originals)
    statuses = {r["status"] for r in records}
    assert statuses <= {"accepted", "duplicate", "near_duplicate"}, [
        (r["file_name"], r["reason"]) for r in records if r["status"] not in ("accepted", "near_duplicate")]
    accepted = [r for r in records if r["status"] == "accepted"]
    assert len(accepted) > 0.9 * len(records)
    assert {r["format"] for r in records} >= {"JPEG", "PNG", "WEBP"}
    largest = max(accepted, key=lambda r: r["width"] * r["height"])
    assert max(largest["width"], largest["height"]) > 1024
    image = _curated(bucket, largest)
    assert max(image.size) == 1024
