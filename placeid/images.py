"""What an image record is, for every part that reads or writes one (ingest, review, training, the command line,
the benchmarks): its statuses, where its curated copy lives, and queries over the collection."""

from __future__ import annotations

import hashlib
import time
from collections import Counter

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from placeid.config import Settings
from placeid.store import CONTENT_CLAIMS, FILENAME_CLAIMS, IMAGES, firestore_call_options, firestore_client

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near_duplicate"
REJECTED = "rejected"
QUARANTINED = "quarantined"
ERROR = "error"  # an unexpected fault, or transient faults that outlasted max_event_age_s: see ``reason``
STATUSES = (ACCEPTED, DUPLICATE, NEAR_DUPLICATE, REJECTED, QUARANTINED, ERROR)


def curated_path(settings: Settings, place_id: str, image_id: str) -> str:
    """Where the normalised copy of an accepted image lives in its bucket."""
    return f"{settings.curated_prefix}{place_id}/{image_id}.jpg"


def copy_bucket(settings: Settings, record: dict) -> str:
    """The bucket a new curated copy of ``record`` goes to: PLACEID_CURATED_BUCKET, else the source's bucket."""
    return settings.curated_bucket or record["source"]["bucket"]


def curated_bucket(record: dict) -> str:
    """The bucket holding an image record's curated copy (records written before it was stored: the source's)."""
    curated = record.get("curated") or {}
    return curated.get("bucket") or record["source"]["bucket"]


def claim_refs(db: firestore.Client, record: dict) -> tuple:
    """The claims an accepted image owns: its file's and its pixels' sha256 (exact duplicates) and its file name
    (``content_claims/file-<sha>``, ``content_claims/pixels-<sha>``, ``filename_claims/<sha of the name>``)."""
    hashes = record["hashes"]
    claims = db.collection(CONTENT_CLAIMS)
    name_key = hashlib.sha256(record["file_name"].encode()).hexdigest()[:32]
    return (claims.document(f"file-{hashes['file_sha256']['hex']}"),
            claims.document(f"pixels-{hashes['pixels_sha256']['hex']}"),
            db.collection(FILENAME_CLAIMS).document(name_key))


def accepted_images(db: firestore.Client):
    """Query for the image records with status ``accepted`` (the curated training set)."""
    return db.collection(IMAGES).where(filter=FieldFilter("status", "==", ACCEPTED))


def status_counts(settings: Settings) -> Counter:
    """Number of image records per status (every status, ``error`` included; zero counts too)."""
    collection = firestore_client(settings.project).collection(IMAGES)
    options = firestore_call_options(settings)  # bounded: an unreachable Firestore fails, it does not hang
    counts = Counter()
    for status in STATUSES:
        result = collection.where(filter=FieldFilter("status", "==", status)).count().get(**options)
        counts[status] = int(result[0][0].value)
    return counts


def wait_for_records(settings: Settings, expected: int, timeout_s: float = 1800.0) -> Counter:
    """Poll Firestore until ``expected`` image records exist, with a progress bar; returns counts by status."""
    from tqdm import tqdm

    images = firestore_client(settings.project).collection(IMAGES)
    deadline = time.monotonic() + timeout_s
    with tqdm(total=expected, desc="ingest", unit="img") as bar:
        while True:
            done = int(images.count().get()[0][0].value)  # one aggregation a second: cheap on any backend
            bar.update(done - bar.n)
            if done >= expected or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    return status_counts(settings)
