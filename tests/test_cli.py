"""The ``placeid`` command against the emulators: catalog, images, review and stack status."""

from __future__ import annotations

from placeid.cli import main
from placeid.ingest import Ingestor, StoredObject
from placeid.stack import LocalStack
from tests.events import upload


def test_catalog_load_and_near(settings, capsys):
    assert main(["catalog", "load"]) == 0
    out = capsys.readouterr().out
    assert "loaded 12 places" in out and "loaded 30 places" in out
    assert main(["catalog", "near", "37.5663", "126.9779", "--radius-km", "0.3", "--kind", "lodging"]) == 0
    out = capsys.readouterr().out
    assert "The Plaza Hotel" in out and "Deoksugung" not in out


def test_images_summary_and_review_cycle(catalog, bucket, world30_photos, capsys):
    record = Ingestor().ingest(StoredObject.from_event_data(
        upload(bucket, "raw/unknown-place/a.jpg", world30_photos["petra"][0].read_bytes())))
    assert main(["images"]) == 0
    assert "quarantined" in capsys.readouterr().out
    assert main(["review", "list"]) == 0
    assert record["image_id"][:8] in capsys.readouterr().out
    assert main(["review", "accept", record["image_id"], "--place", "nowhere"]) == 1
    assert "unknown place id 'nowhere'" in capsys.readouterr().out
    assert main(["review", "accept", record["image_id"], "--place", "petra"]) == 0
    assert '"status": "accepted"' in capsys.readouterr().out
    assert bucket.blob(f"curated/petra/{record['image_id']}.jpg").exists()


def test_stack_status_reports_each_service(settings, capsys):
    assert main(["stack", "status"]) == 0
    out = capsys.readouterr().out
    for service in ("firestore", "pubsub", "gcs", "ingest", "bridge", "predict"):
        assert service in out
    report = LocalStack(settings).status()
    # The session runs the emulators; the functions and the bridge are started only by the tests that need them.
    assert {name: entry["healthy"] for name, entry in report.items()} == {
        "firestore": True, "pubsub": True, "gcs": True, "ingest": False, "bridge": False, "predict": False}
