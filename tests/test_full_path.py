"""The whole local path: upload to fake-gcs-server -> OBJECT_FINALIZE on the Pub/Sub emulator -> bridge ->
CloudEvent over real HTTP -> ingest function under functions-framework -> Firestore record + curated copy."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import uuid

import pytest
from google.cloud import pubsub_v1

from placeid.local.stack import LocalStack, StackError


@pytest.fixture
def function_stack(settings, catalog):
    """The ingest function and the bridge as real processes, on a fresh subscription."""
    own = dataclasses.replace(settings, bridge_subscription=f"bridge-{uuid.uuid4().hex[:8]}")
    stack = LocalStack(own)
    stack.provision_pubsub()
    try:
        stack.up(("ingest", "bridge"))
        yield stack
    finally:
        stack.down(("ingest", "bridge"))
        subscriber = pubsub_v1.SubscriberClient()
        subscriber.delete_subscription(
            subscription=subscriber.subscription_path(own.project, own.bridge_subscription))
        subscriber.close()


def wait_for(predicate, timeout_s: float = 60.0, interval_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def records(db) -> list[dict]:
    return [snap.to_dict() for snap in db.collection("images").stream()]


def test_upload_reaches_firestore_and_curated(function_stack, db, bucket, world30_photos):
    photos = world30_photos["moulin-rouge"][:3]
    for photo in photos:
        bucket.blob(f"raw/moulin-rouge/{photo.name}").upload_from_filename(str(photo))
    bucket.blob("raw/moulin-rouge/notes.jpg").upload_from_string(b"not a photo")
    found = wait_for(lambda: len(records(db)) == 4 and records(db))
    by_name = {r["file_name"]: r for r in found}
    assert by_name["notes.jpg"]["status"] == "rejected"
    assert all(by_name[p.name]["status"] == "accepted" for p in photos)
    wait_for(lambda: all(r.get("curated", {}).get("written") for r in records(db) if r["status"] == "accepted"))
    assert len(list(bucket.list_blobs(prefix="curated/moulin-rouge/"))) == 3
    # The curated copies land in the same bucket and are notified too; the function ignores them.
    time.sleep(1.0)
    assert len(records(db)) == 4
    log = function_stack.log_file("ingest").read_text()
    assert '"message": "ingested"' in log and '"severity": "INFO"' in log


def test_firestore_outage_is_retried_until_it_recovers(function_stack, emulators, db, bucket, world30_photos):
    firestore_pid = emulators.pid("firestore")
    os.killpg(firestore_pid, signal.SIGSTOP)  # Firestore hangs: every call times out
    try:
        photo = world30_photos["serralves"][0]
        bucket.blob(f"raw/serralves/{photo.name}").upload_from_filename(str(photo))
        bridge_log = function_stack.log_file("bridge")
        wait_for(lambda: "delivery failed, will be redelivered" in bridge_log.read_text(), timeout_s=45)
        assert "transient failure" in function_stack.log_file("ingest").read_text()
    finally:
        os.killpg(firestore_pid, signal.SIGCONT)
    found = wait_for(lambda: records(db), timeout_s=60)
    wait_for(lambda: records(db)[0].get("curated", {}).get("written"))
    time.sleep(2.0)  # any extra redelivery would show up as a second record or copy
    assert [r["status"] for r in records(db)] == ["accepted"]
    assert found[0]["source"]["name"] == f"raw/serralves/{photo.name}"
    assert len(list(bucket.list_blobs(prefix="curated/"))) == 1


def test_missing_java_or_gcloud_is_a_clear_error(stack_settings, scratch_dir, monkeypatch):
    """The SDK comes from PLACEID_GCLOUD_SDK (Settings.gcloud_sdk), else from gcloud on PATH."""
    settings = dataclasses.replace(stack_settings, state_dir=scratch_dir, firestore_port=1, gcloud_sdk=None)
    stack = LocalStack(dataclasses.replace(settings, gcloud_sdk=scratch_dir / "no-sdk"))
    with pytest.raises(StackError, match="Firestore emulator not found"):
        stack.start("firestore")
    stack = LocalStack(settings)
    monkeypatch.setenv("PATH", str(scratch_dir))
    with pytest.raises(StackError, match="gcloud is not installed"):
        stack.start("firestore")
    sdk = scratch_dir / "sdk"
    binary = sdk / "platform" / "cloud-firestore-emulator" / "cloud_firestore_emulator"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    stack = LocalStack(dataclasses.replace(settings, gcloud_sdk=sdk))
    with pytest.raises(StackError, match="java is not installed"):
        stack.start("firestore")
