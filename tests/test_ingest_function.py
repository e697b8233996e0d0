"""The ingest function in-process (functions_framework.create_app) against the real emulators."""

from __future__ import annotations

import io
import threading

import pytest
from functions_framework import create_app
from PIL import Image, ImageEnhance

from placeid.config import REPO_ROOT, Settings
from placeid.ingest import FINALIZED_EVENT_TYPE as FINALIZED
from placeid.ingest import Ingestor, StoredObject
from placeid_edge.errors import TransientError
from tests.events import post_event, storage_event, upload

SOURCE = str(REPO_ROOT / "functions" / "ingest" / "main.py")


@pytest.fixture
def client(catalog):
    return create_app(target="ingest", source=SOURCE).test_client()


def images(db) -> list[dict]:
    return [snap.to_dict() for snap in db.collection("images").stream()]


def curated_objects(bucket) -> list[str]:
    return sorted(blob.name for blob in bucket.list_blobs(prefix="curated/"))


def test_accepts_photo_and_writes_normalised_copy(client, db, bucket, world30_photos):
    photo = world30_photos["colosseum"][0]
    resource = upload(bucket, f"raw/colosseum/{photo.name}", photo.read_bytes())
    response = post_event(client, storage_event(resource))
    assert response.status_code == 200
    [record] = images(db)
    assert record["status"] == "accepted"
    assert record["place_id"] == "colosseum" and record["label_source"] == "path"
    assert record["source"]["generation"] == int(resource["generation"])
    assert record["format"] == "JPEG"
    assert record["hashes"]["phash"]["algorithm"] == "phash" and record["hashes"]["phash"]["bits"] == 64
    assert record["hashes"]["file_sha256"]["bits"] == 256
    assert record["curated"]["written"] is True
    [curated] = curated_objects(bucket)
    assert curated == f"curated/colosseum/{record['image_id']}.jpg"
    copy = Image.open(io.BytesIO(bucket.blob(curated).download_as_bytes()))
    assert copy.format == "JPEG" and copy.mode == "RGB"
    assert not copy.getexif()
    assert copy.size == (record["width"], record["height"])  # world30 photos are under the size cap


def test_ignores_other_prefixes_and_event_types(client, db, bucket, world30_photos):
    data = world30_photos["louvre"][0].read_bytes()
    outside = upload(bucket, "curated/louvre/x.jpg", data)
    inside = upload(bucket, "raw/louvre/x.jpg", data)
    assert post_event(client, storage_event(outside)).status_code == 200
    assert post_event(client, storage_event(inside, "google.cloud.storage.object.v1.deleted")).status_code == 200
    assert images(db) == []


def test_redelivery_gives_one_record_and_one_copy(client, db, bucket, world30_photos):
    resource = upload(bucket, "raw/petra/a.jpg", world30_photos["petra"][0].read_bytes())
    event = storage_event(resource)
    for _ in range(3):
        assert post_event(client, event).status_code == 200
    assert [r["status"] for r in images(db)] == ["accepted"]
    assert len(curated_objects(bucket)) == 1


def test_redelivery_after_crash_before_copy_completes_the_copy(catalog, db, bucket, world30_photos):
    ingestor = Ingestor()
    resource = upload(bucket, "raw/petra/b.jpg", world30_photos["petra"][1].read_bytes())
    obj = StoredObject.from_event_data(resource)
    record = ingestor.ingest(obj)
    # Simulate a crash between the Firestore commit and the upload of the copy.
    bucket.blob(record["curated"]["path"]).delete()
    db.collection("images").document(record["image_id"]).update({"curated.written": False})
    again = ingestor.ingest(obj)
    assert again["status"] == "accepted" and again["curated"]["written"]
    assert curated_objects(bucket) == [record["curated"]["path"]]
    assert len(images(db)) == 1


def test_exact_duplicate_under_another_name(client, db, bucket, world30_photos):
    data = world30_photos["taj-mahal"][0].read_bytes()
    first = upload(bucket, "raw/taj-mahal/one.jpg", data)
    second = upload(bucket, "raw/taj-mahal/two.jpg", data)
    post_event(client, storage_event(first))
    post_event(client, storage_event(second))
    by_name = {r["file_name"]: r for r in images(db)}
    assert by_name["one.jpg"]["status"] == "accepted"
    assert by_name["two.jpg"]["status"] == "duplicate"
    assert by_name["two.jpg"]["duplicate_of"] == by_name["one.jpg"]["image_id"]
    assert len(curated_objects(bucket)) == 1


def test_same_pixels_different_bytes_is_duplicate(client, db, bucket, world30_photos):
    photo = Image.open(world30_photos["alhambra"][0])
    png_a, png_b = io.BytesIO(), io.BytesIO()
    photo.save(png_a, "PNG")
    photo.save(png_b, "PNG", compress_level=1)  # other bytes, same pixels
    assert png_a.getvalue() != png_b.getvalue()
    post_event(client, storage_event(upload(bucket, "raw/alhambra/a.png", png_a.getvalue())))
    post_event(client, storage_event(upload(bucket, "raw/alhambra/b.png", png_b.getvalue())))
    statuses = sorted(r["status"] for r in images(db))
    assert statuses == ["accepted", "duplicate"]
    assert "pixels" in next(r for r in images(db) if r["status"] == "duplicate")["reason"]


def test_label_from_metadata_unknown_place_and_conflicts(client, db, bucket, world30_photos):
    photos = world30_photos["petra"]
    post_event(client, storage_event(upload(bucket, "raw/loose.jpg", photos[0].read_bytes(), {"place_id": "petra"})))
    post_event(client, storage_event(upload(bucket, "raw/atlantis/x.jpg", photos[1].read_bytes())))
    post_event(client, storage_event(upload(bucket, "raw/petra/y.jpg", photos[2].read_bytes(), {"place_id": "louvre"})))
    post_event(client, storage_event(upload(bucket, "raw/unlabelled.jpg", photos[3].read_bytes())))
    by_name = {r["file_name"]: r for r in images(db)}
    assert by_name["loose.jpg"]["status"] == "accepted" and by_name["loose.jpg"]["label_source"] == "metadata"
    assert by_name["x.jpg"]["status"] == "quarantined" and "unknown place id 'atlantis'" in by_name["x.jpg"]["reason"]
    assert by_name["y.jpg"]["status"] == "quarantined" and "conflicting labels" in by_name["y.jpg"]["reason"]
    assert by_name["unlabelled.jpg"]["status"] == "quarantined" and "no place label" in by_name["unlabelled.jpg"]["reason"]
    assert curated_objects(bucket) == [f"curated/petra/{by_name['loose.jpg']['image_id']}.jpg"]


def test_same_file_name_with_different_content_is_quarantined(client, db, bucket, world30_photos):
    post_event(client, storage_event(upload(bucket, "raw/louvre/IMG_0001.jpg", world30_photos["louvre"][0].read_bytes())))
    post_event(client, storage_event(upload(bucket, "raw/petra/IMG_0001.jpg", world30_photos["petra"][0].read_bytes())))
    records = {r["place_id"]: r for r in images(db)}
    assert records["louvre"]["status"] == "accepted"
    assert records["petra"]["status"] == "quarantined"
    assert "already labelled 'louvre'" in records["petra"]["reason"]
    assert records["petra"]["duplicate_of"] == records["louvre"]["image_id"]


def test_reads_exactly_the_generation_in_the_event(client, db, bucket, world30_photos):
    old = upload(bucket, "raw/louvre/same-name.jpg", world30_photos["louvre"][1].read_bytes())
    new = upload(bucket, "raw/louvre/same-name.jpg", world30_photos["louvre"][2].read_bytes())
    assert old["generation"] != new["generation"]
    post_event(client, storage_event(new))
    [record] = images(db)
    assert record["source"]["generation"] == int(new["generation"])
    import hashlib
    assert record["hashes"]["file_sha256"]["hex"] == hashlib.sha256(world30_photos["louvre"][2].read_bytes()).hexdigest()
    # The overwritten generation is gone (no versioning): its late event is recorded, not retried forever.
    assert post_event(client, storage_event(old)).status_code == 200
    old_record = next(r for r in images(db) if r["source"]["generation"] == int(old["generation"]))
    assert old_record["status"] == "rejected" and "no longer exists" in old_record["reason"]


def test_size_is_checked_before_download(catalog, db, bucket, world30_photos):
    ingestor = Ingestor(Settings.from_env(max_object_bytes=1000))
    resource = upload(bucket, "raw/petra/big.jpg", world30_photos["petra"][0].read_bytes())
    record = ingestor.ingest(StoredObject.from_event_data(resource))
    assert record["status"] == "rejected" and "file too large" in record["reason"]
    assert "hashes" not in record or not record["hashes"]  # nothing was downloaded


def test_malformed_event_data_is_dropped_not_retried(client, db, capsys):
    event = storage_event({"bucket": "b", "name": "raw/x/y.jpg"})  # no generation
    response = post_event(client, event)
    assert response.status_code == 200  # acknowledged: redelivering it could never succeed
    assert images(db) == []
    assert "dropped malformed storage event" in capsys.readouterr().out


def test_concurrent_near_identical_photos_accept_exactly_one(catalog, db, bucket, world30_photos):
    photo = Image.open(world30_photos["hagia-sophia"][3]).convert("RGB")
    variants = []
    for index, factor in enumerate((1.0, 1.08, 0.93)):
        out = io.BytesIO()
        ImageEnhance.Brightness(photo).enhance(factor).save(out, "JPEG", quality=85 - index * 10)
        variants.append(upload(bucket, f"raw/hagia-sophia/variant-{index}.jpg", out.getvalue()))
    ingestors = [Ingestor() for _ in variants]
    ingestor = ingestors[0]
    barrier = threading.Barrier(len(variants))
    results, errors = [], []

    def run(ingestor, resource):
        barrier.wait()
        try:
            results.append(ingestor.ingest(StoredObject.from_event_data(resource)))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(ingestors, variants)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    statuses = sorted(r["status"] for r in images(db))
    assert statuses == ["accepted", "near_duplicate", "near_duplicate"]
    winner = next(r for r in images(db) if r["status"] == "accepted")
    assert all(r["duplicate_of"] == winner["image_id"] for r in images(db) if r["status"] != "accepted")
    assert curated_objects(bucket) == [winner["curated"]["path"]]
    indexed = ingestor.index.find(winner["hashes"]["phash"]["hex"])
    assert [m.image_id for m in indexed] == [winner["image_id"]]


# -- labels, buckets, and faults: every outcome is recorded ------------------------------------------------

def test_place_ids_firestore_refuses_are_quarantined_before_reaching_it(client, db, bucket, world30_photos):
    photos = world30_photos["petra"]
    for index, label in enumerate(("__x__", "a" * 2000, "Petra", "petra/louvre")):
        name = f"raw/loose-{index}.jpg"
        response = post_event(client, storage_event(upload(bucket, name, photos[index].read_bytes(),
                                                           {"place_id": label})))
        assert response.status_code == 200
    response = post_event(client, storage_event(upload(bucket, "raw/__x__/y.jpg", photos[4].read_bytes())))
    assert response.status_code == 200
    records = images(db)
    assert len(records) == 5
    for record in records:
        assert record["status"] == "quarantined" and record["place_id"] is None
        assert record["reason"].startswith("invalid place id") and len(record["reason"]) < 300
    assert curated_objects(bucket) == []


def test_unsafe_object_names_never_yield_a_label(client, db, bucket, world30_photos):
    names = ["raw/louvre/../petra/x.jpg", "raw/./louvre/a.jpg", "raw/louvre//b.jpg", "raw/louvre/c\\d.jpg",
             "raw/louvre\\petra/e.jpg", "raw/louvre/f\x07.jpg", "raw/louvre\x1b/g.jpg"]
    for name, photo in zip(names, world30_photos["louvre"]):
        assert post_event(client, storage_event(upload(bucket, name, photo.read_bytes()))).status_code == 200
    records = images(db)
    assert len(records) == len(names)
    for record in records:
        assert record["status"] == "quarantined" and record["place_id"] is None
        assert record["reason"].startswith("unsafe object name"), record["reason"]
    assert curated_objects(bucket) == []


def test_events_for_another_bucket_are_ignored(client, db, bucket, settings, world30_photos, capsys):
    from placeid.store import ensure_bucket

    other = ensure_bucket(settings, f"{settings.bucket}-other")
    resource = upload(other, "raw/petra/x.jpg", world30_photos["petra"][0].read_bytes())
    try:
        assert post_event(client, storage_event(resource)).status_code == 200
        assert images(db) == []
        assert list(other.list_blobs(prefix="curated/")) == [] and curated_objects(bucket) == []
        assert "ignored event for another bucket" in capsys.readouterr().out
    finally:
        for blob in other.list_blobs():
            blob.delete()


def test_unexpected_fault_is_recorded_as_error_not_retried(client, db, bucket, world30_photos, capsys):
    # Firestore refuses the field name '__x__' (reserved): a deterministic fault no retry can cure.
    resource = upload(bucket, "raw/petra/odd-metadata.jpg", world30_photos["petra"][0].read_bytes(), {"__x__": "1"})
    event = storage_event(resource)
    for _ in range(2):  # acknowledged, and a redelivery finds the record
        assert post_event(client, event).status_code == 200
    [record] = images(db)
    assert record["status"] == "error" and record["reason"].startswith("InvalidArgument: ")
    assert "__x__" in record["reason"] and len(record["reason"]) <= 520
    assert record["metadata"] == {} and record["source"]["name"] == "raw/petra/odd-metadata.jpg"
    assert curated_objects(bucket) == []
    assert '"severity": "ERROR", "message": "ingestion failed, recording an error"' in capsys.readouterr().out


def test_fault_after_acceptance_demotes_to_error_and_releases_claims(catalog, db, bucket, world30_photos):
    data = world30_photos["petra"][1].read_bytes()
    misconfigured = Ingestor(Settings.from_env(curated_bucket="placeid-no-such-bucket"))
    resource = upload(bucket, "raw/petra/first.jpg", data)
    record = misconfigured.handle_event(FINALIZED, resource)
    assert record["status"] == "error" and record["reason"].startswith("NotFound: ")
    assert "curated" not in record
    # Its content claims were released: the same photo, delivered again under another name, is accepted.
    again = Ingestor().handle_event(FINALIZED, upload(bucket, "raw/petra/second.jpg", data))
    assert again["status"] == "accepted" and again["curated"]["written"]


@pytest.fixture
def dead_storage(monkeypatch, catalog, stack_settings):
    """The ingest function's environment with Cloud Storage unreachable (nothing listens on its port) and a
    project of its own (fresh clients, its own Firestore documents): a real transient fault."""
    from tests.conftest import free_port, reset_firestore
    from placeid.store import firestore_client

    project = "placeid-test-dead-storage"
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PLACEID_FIRESTORE_TIMEOUT_S", "1")
    other = Settings.from_env(firestore_port=stack_settings.firestore_port)
    reset_firestore(other)
    yield firestore_client(project)
    reset_firestore(other)


def test_transient_faults_are_retried_while_the_event_is_young_then_recorded(dead_storage, bucket, world30_photos):
    from datetime import datetime, timedelta, timezone

    from placeid.ingest import event_age_s

    client = create_app(target="ingest", source=SOURCE).test_client()
    resource = upload(bucket, "raw/petra/unlucky.jpg", world30_photos["petra"][2].read_bytes())
    young = storage_event(resource)
    young["time"] = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    assert post_event(client, young).status_code == 500  # the platform redelivers
    assert images(dead_storage) == []
    old = storage_event(resource)
    old["time"] = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    assert post_event(client, old).status_code == 200  # given up, and recorded
    [record] = images(dead_storage)
    assert record["status"] == "error" and record["reason"].startswith("gave up after retries for 72")
    assert "RetryError" in record["reason"]
    # A missing or unparseable time counts as young.
    assert event_age_s(None) is None and event_age_s("yesterday") is None
    with pytest.raises(TransientError):
        Ingestor().handle_event(FINALIZED, dict(resource, name="raw/petra/other.jpg"), "yesterday")
