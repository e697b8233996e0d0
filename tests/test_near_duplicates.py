"""Near duplicates made from real photos are found through the index; different photos of the same
landmark are not flagged."""

from __future__ import annotations

import io
from itertools import islice

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from placeid.hashing import hamming_distance
from placeid.ingest import Ingestor, StoredObject
from tests.events import upload


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def variants(photo: Image.Image) -> dict[str, bytes]:
    """The edits a re-crawl or a re-post makes to a photo."""
    w, h = photo.size
    captioned = photo.copy()
    ImageDraw.Draw(captioned).text((8, h - 24), "(c) stock photo agency 2024", fill=(255, 255, 255))
    return {
        "resized": _jpeg(photo.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
        "low-quality": _jpeg(photo, quality=15),
        "cropped": _jpeg(photo.crop((int(w * 0.02), int(h * 0.02), int(w * 0.98), int(h * 0.98)))),
        "brighter": _jpeg(ImageEnhance.Brightness(photo).enhance(1.15)),
        "captioned": _jpeg(captioned),
        "mirrored": _jpeg(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "framed": _jpeg(ImageOps.expand(photo, border=max(w, h) // 20, fill=(255, 255, 255))),
    }


def test_edited_copies_are_near_duplicates(catalog, db, bucket, world30_photos):
    ingestor = Ingestor()
    originals = [paths[5] for paths in islice(world30_photos.values(), 0, 30, 6)]  # 5 places
    for index, path in enumerate(originals):
        place = path.parent.name
        original = ingestor.ingest(StoredObject.from_event_data(
            upload(bucket, f"raw/{place}/original-{index}.jpg", path.read_bytes())))
        assert original["status"] == "accepted"
        for edit, data in variants(Image.open(path).convert("RGB")).items():
            record = ingestor.ingest(StoredObject.from_event_data(
                upload(bucket, f"raw/{place}/{edit}-{index}.jpg", data)))
            assert record["status"] == "near_duplicate", (path.name, edit, record["reason"])
            assert record["duplicate_of"] == original["image_id"]
            assert 0 <= record["near_distance"] <= ingestor.settings.near_dup_distance
            how = {"mirrored": "the mirror image's pHash", "framed": "the pHash without its border"}.get(edit, "pHash")
            assert record["reason"].startswith(how), (edit, record["reason"])


def test_different_photos_of_one_landmark_are_not_flagged(catalog, db, bucket, world30_photos):
    """40 Colosseum photos: the index flags exactly the photos a brute-force pairwise comparison of pHashes (and
    of mirror images' and borderless pHashes with them) flags (world30 holds a few real re-encoded copies), and accepts every
    other photo of the building."""
    ingestor = Ingestor()
    d = ingestor.settings.near_dup_distance
    seen: list[str] = []
    expected, actual = [], []
    for path in world30_photos["colosseum"][:40]:
        record = ingestor.ingest(StoredObject.from_event_data(
            upload(bucket, f"raw/colosseum/{path.name}", path.read_bytes())))
        lookups = [record["hashes"][key]["hex"] for key in ("phash", "phash_mirror", "phash_trimmed")
                   if key in record["hashes"]]
        phash = lookups[0]
        is_near = any(min(hamming_distance(mine, other) for mine in lookups) <= d for other in seen)
        expected.append("near_duplicate" if is_near else "accepted")
        actual.append(record["status"])
        if not is_near:
            seen.append(phash)
    assert actual == expected
    assert actual.count("accepted") >= 36


def test_index_lookup_finds_only_within_distance(catalog, db, bucket, world30_photos):
    ingestor = Ingestor()
    path = world30_photos["louvre"][0]
    record = ingestor.ingest(StoredObject.from_event_data(upload(bucket, "raw/louvre/a.jpg", path.read_bytes())))
    phash = int(record["hashes"]["phash"]["hex"], 16)
    d = ingestor.settings.near_dup_distance
    near = f"{phash ^ ((1 << d) - 1):016x}"  # exactly d bits flipped
    far = f"{phash ^ ((1 << (d + 1)) - 1):016x}"  # d + 1 bits flipped
    assert [m.image_id for m in ingestor.index.find(near)] == [record["image_id"]]
    assert ingestor.index.find(far) == []


def test_reindex_for_a_new_distance(catalog, db, bucket, world30_photos, monkeypatch, capsys):
    from placeid_cli.main import main
    from placeid.config import Settings

    ingestor = Ingestor()
    path = world30_photos["taj-mahal"][4]
    original = ingestor.ingest(StoredObject.from_event_data(upload(bucket, "raw/taj-mahal/o.jpg", path.read_bytes())))
    other = ingestor.ingest(StoredObject.from_event_data(
        upload(bucket, "raw/petra/p.jpg", world30_photos["petra"][4].read_bytes())))
    assert {original["status"], other["status"]} == {"accepted"}
    monkeypatch.setenv("PLACEID_NEAR_DUP_DISTANCE", "4")
    assert main(["images", "reindex"]) == 0
    assert "2 accepted images in 6 band documents" in " ".join(capsys.readouterr().out.split())  # 3 bands each
    assert {ref.id.split(":")[0] for ref in db.collection("near_bands").list_documents()} == {"3"}
    narrower = Ingestor(Settings.from_env())
    assert narrower.index.distance == 4
    assert [m.image_id for m in narrower.index.find(original["hashes"]["phash"]["hex"])] == [original["image_id"]]
    resized = _jpeg(Image.open(path).convert("RGB").resize((160, 120)))
    again = narrower.ingest(StoredObject.from_event_data(upload(bucket, "raw/taj-mahal/small.jpg", resized)))
    assert again["status"] == "near_duplicate" and again["duplicate_of"] == original["image_id"]
