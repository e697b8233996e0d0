"""The ``placeid`` command against the emulators: catalog, images, review and stack status."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from placeid_cli.main import main
from placeid.config import REPO_ROOT
from placeid.ingest import FINALIZED_EVENT_TYPE, Ingestor, StoredObject
from placeid.local.stack import LocalStack
from tests.conftest import free_port
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


def test_images_and_review_show_error_records(catalog, bucket, world30_photos, capsys):
    resource = upload(bucket, "raw/petra/a.jpg", world30_photos["petra"][0].read_bytes(), {"__x__": "refused"})
    record = Ingestor().handle_event(FINALIZED_EVENT_TYPE, resource)
    assert record["status"] == "error"
    capsys.readouterr()
    assert main(["images"]) == 0
    assert re.search(r"error\s*│\s*1\s*│", capsys.readouterr().out)
    assert main(["review", "list", "--status", "error"]) == 0
    out = capsys.readouterr().out
    assert record["image_id"][:8] in out and "InvalidArgument" in out


@pytest.mark.parametrize("argv, service", [
    (["images"], "Firestore emulator"), (["review", "list"], "Firestore emulator"),
    (["catalog", "load"], "Firestore emulator"), (["models", "list"], "Firestore emulator"),
    (["collect", "upload", "."], "Cloud Storage emulator (fake-gcs-server)"),
])
def test_commands_fail_within_seconds_when_the_stack_is_down(argv, service):
    ports = {name: str(free_port()) for name in ("PLACEID_FIRESTORE_PORT", "PLACEID_GCS_PORT", "PLACEID_PUBSUB_PORT")}
    env = dict(os.environ, PLACEID_TARGET="local", **ports)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "placeid_cli.main", *argv], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 1 and elapsed < 10, (elapsed, output)
    port = ports["PLACEID_FIRESTORE_PORT" if service.startswith("Firestore") else "PLACEID_GCS_PORT"]
    assert (f"error: {service} at 127.0.0.1:{port} is not reachable: start the local stack with "
            "`placeid stack up` (or make demo)") in output
    assert "Traceback" not in output
