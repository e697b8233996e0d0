"""Ingestion of one finalized Cloud Storage object: validate, hash, dedupe, label, record, copy.

Retry discipline (Cloud Functions at-least-once delivery): bad input is recorded as ``rejected`` or
``quarantined`` and the handler returns normally; transient infrastructure faults raise
:class:`TransientError` so the platform redelivers. Every step is idempotent per (bucket, object, generation).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from placeid.config import Settings
from placeid_edge.errors import InvalidImage, TransientError, UnsupportedMediaType
from placeid.hashing import perceptual_hashes, sha256_hash
from placeid_edge.imaging import ValidationLimits, decode_image, encode_curated_jpeg, pixel_bytes, sniff_format
from placeid.logs import get_logger, log
from placeid.neardup import NearDuplicateIndex
from placeid.store import (
    CONTENT_CLAIMS,
    FILENAME_CLAIMS,
    IMAGES,
    PLACES,
    firestore_call_options,
    firestore_client,
    is_transient,
    storage_client,
)

FINALIZED_EVENT_TYPE = "google.cloud.storage.object.v1.finalized"

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near_duplicate"
REJECTED = "rejected"
QUARANTINED = "quarantined"
STATUSES = (ACCEPTED, DUPLICATE, NEAR_DUPLICATE, REJECTED, QUARANTINED)

logger = get_logger("ingest")


@dataclass(frozen=True)
class StoredObject:
    """The object a finalize event names (the ``data`` of a storage CloudEvent)."""

    bucket: str
    name: str
    generation: int
    size: int | None = None
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_event_data(cls, data: dict) -> "StoredObject":
        try:
            return cls(
                bucket=data["bucket"],
                name=data["name"],
                generation=int(data["generation"]),
                size=int(data["size"]) if data.get("size") not in (None, "") else None,
                metadata=dict(data.get("metadata") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"event data is not a storage object resource: {exc}") from exc

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"

    @property
    def record_id(self) -> str:
        """Deterministic id of this object generation's record: redelivery finds the same document."""
        return hashlib.sha256(f"{self.bucket}/{self.name}#{self.generation}".encode()).hexdigest()[:32]


def accepted_images(db: firestore.Client):
    """Query for the image records with status ``accepted`` (the curated training set)."""
    return db.collection(IMAGES).where(filter=FieldFilter("status", "==", ACCEPTED))


def curated_path(settings: Settings, place_id: str, image_id: str) -> str:
    """Where the normalised copy of an accepted image lives in the bucket."""
    return f"{settings.curated_prefix}{place_id}/{image_id}.jpg"


def label_from(obj: StoredObject, settings: Settings) -> tuple[str | None, str | None, str | None]:
    """(place_id, label_source, problem) from ``raw/<place_id>/...`` and/or the ``place_id`` metadata."""
    parts = PurePosixPath(obj.name[len(settings.raw_prefix):]).parts
    from_path = parts[0] if len(parts) >= 2 else None
    from_meta = (obj.metadata.get("place_id") or "").strip() or None
    if from_path and from_meta and from_path != from_meta:
        return None, None, f"conflicting labels: path says {from_path!r}, metadata says {from_meta!r}"
    if from_path:
        return from_path, "path", None
    if from_meta:
        return from_meta, "metadata", None
    return None, None, "no place label: not under raw/<place_id>/ and no place_id metadata"


class Ingestor:
    """Processes finalize events for one bucket layout; holds the (reused) Google Cloud clients."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self.db = firestore_client(self.settings.project)
        self.gcs = storage_client(self.settings.project)
        self.call_options = firestore_call_options(self.settings)
        self.limits = ValidationLimits.from_settings(self.settings)
        self.index = NearDuplicateIndex(self.db, self.settings.near_dup_distance, self.call_options)
        self._known_places: dict[str, float] = {}

    # -- entry points -------------------------------------------------------------------------

    def handle_event(self, event_type: str, data: dict) -> dict | None:
        """Handle one CloudEvent; returns the image record, or None when the event is not for us."""
        if event_type != FINALIZED_EVENT_TYPE:
            log(logger, logging.INFO, "ignored event type", event_type=event_type)
            return None
        try:
            obj = StoredObject.from_event_data(data)
        except ValueError as exc:  # a malformed event never gets better: drop it, loudly
            log(logger, logging.ERROR, "dropped malformed storage event", error=str(exc))
            return None
        if not obj.name.startswith(self.settings.raw_prefix) or obj.name.endswith("/"):
            log(logger, logging.INFO, "ignored object outside raw/", object=obj.uri)
            return None
        started = time.perf_counter()
        try:
            record = self.ingest(obj)
        except TransientError:
            raise
        except Exception as exc:
            if is_transient(exc):
                log(logger, logging.WARNING, "transient failure, event will be retried",
                    object=obj.uri, generation=obj.generation, error=repr(exc))
                raise TransientError(f"transient failure ingesting {obj.uri}: {exc}") from exc
            raise
        log(logger, logging.INFO, "ingested", object=obj.uri, generation=obj.generation,
            image_id=obj.record_id, status=record["status"], reason=record.get("reason"),
            place_id=record.get("place_id"), duration_ms=round((time.perf_counter() - started) * 1000, 1))
        return record

    def ingest(self, obj: StoredObject) -> dict:
        """Process one object generation; idempotent."""
        image_ref = self.db.collection(IMAGES).document(obj.record_id)
        existing = image_ref.get(**self.call_options)
        if existing.exists:
            record = existing.to_dict()
            if record["status"] != ACCEPTED or record.get("curated", {}).get("written"):
                return record  # redelivery of finished work

        record = self._base_record(obj)
        blob = self.gcs.bucket(obj.bucket).get_blob(obj.name, generation=obj.generation)
        if blob is None:
            return self._commit_final(image_ref, record, REJECTED, "object generation no longer exists")
        record["size_bytes"] = blob.size
        record["content_type"] = blob.content_type
        if blob.size is not None and blob.size > self.settings.max_object_bytes:
            return self._commit_final(image_ref, record, REJECTED,
                                      f"file too large: {blob.size} bytes > limit {self.settings.max_object_bytes}")
        try:
            data = blob.download_as_bytes()
        except gexc.NotFound:  # overwritten or deleted since the metadata read
            return self._commit_final(image_ref, record, REJECTED, "object generation no longer exists")
        record["hashes"] = {"file_sha256": sha256_hash(data).to_dict()}
        try:
            decoded = decode_image(data, self.limits)
        except (InvalidImage, UnsupportedMediaType) as exc:
            record["format"] = sniff_format(data)
            return self._commit_final(image_ref, record, REJECTED, exc.message)

        record.update(
            format=decoded.format, source_mode=decoded.source_mode, frames=decoded.frames,
            exif_orientation=decoded.orientation, width=decoded.size[0], height=decoded.size[1],
        )
        record["hashes"]["pixels_sha256"] = sha256_hash(pixel_bytes(decoded.rgb)).to_dict()
        record["hashes"].update({k: v.to_dict() for k, v in perceptual_hashes(decoded.rgb).items()})
        place_id, label_source, problem = label_from(obj, self.settings)
        if place_id and not problem and not self._place_exists(place_id):
            problem = f"unknown place id {place_id!r}"
        record.update(place_id=place_id, label_source=label_source)

        record = self._decide_and_commit(image_ref, record, problem)
        if record["status"] == ACCEPTED:
            record = self._settle_concurrent_near_duplicates(image_ref, record)
        if record["status"] == ACCEPTED:
            record = self.write_curated_copy(image_ref, record, decoded)
        return record

    # -- steps --------------------------------------------------------------------------------

    def _base_record(self, obj: StoredObject) -> dict:
        return {
            "image_id": obj.record_id,
            "status": None,
            "reason": None,
            "duplicate_of": None,
            "source": {"bucket": obj.bucket, "name": obj.name, "generation": obj.generation, "uri": obj.uri},
            "file_name": PurePosixPath(obj.name).name,
            "metadata": obj.metadata,
            "place_id": None,
            "label_source": None,
            "hashes": {},
            "created_at": firestore.SERVER_TIMESTAMP,
            "updated_at": firestore.SERVER_TIMESTAMP,
        }

    def _place_exists(self, place_id: str, ttl_s: float = 60.0) -> bool:
        if time.monotonic() - self._known_places.get(place_id, -ttl_s) < ttl_s:
            return True
        if "/" in place_id or place_id in (".", ".."):
            return False
        exists = self.db.collection(PLACES).document(place_id).get(**self.call_options).exists
        if exists:
            self._known_places[place_id] = time.monotonic()
        return exists

    def _commit_final(self, image_ref, record: dict, status: str, reason: str) -> dict:
        """Record a terminal outcome (rejected) unless a record already exists."""
        record.update(status=status, reason=reason)
        try:
            image_ref.create(record, **self.call_options)
        except gexc.AlreadyExists:
            pass  # an earlier delivery recorded it
        return image_ref.get(**self.call_options).to_dict()

    def _decide_and_commit(self, image_ref, record: dict, label_problem: str | None) -> dict:
        """In one transaction: exact-duplicate and file-name claims, near-duplicate verdict, record."""
        file_sha = record["hashes"]["file_sha256"]["hex"]
        file_claim_ref, pixel_claim_ref, name_claim_ref = self.claim_refs(record)
        near = [] if label_problem else self.index.find(record["hashes"]["phash"]["hex"])

        @firestore.transactional
        def decide(txn: firestore.Transaction) -> dict:
            snap = image_ref.get(transaction=txn)
            if snap.exists:
                return snap.to_dict()
            verdict = dict(record)
            file_claim = file_claim_ref.get(transaction=txn)
            pixel_claim = pixel_claim_ref.get(transaction=txn)
            name_claim = name_claim_ref.get(transaction=txn)
            if label_problem:
                verdict.update(status=QUARANTINED, reason=label_problem)
            elif file_claim.exists:
                verdict.update(status=DUPLICATE, duplicate_of=file_claim.get("image_id"),
                               reason="identical file bytes (sha256) to an accepted image")
            elif pixel_claim.exists:
                verdict.update(status=DUPLICATE, duplicate_of=pixel_claim.get("image_id"),
                               reason="identical decoded pixels to an accepted image")
            elif name_claim.exists and name_claim.get("file_sha256") != file_sha:
                verdict.update(status=QUARANTINED, duplicate_of=name_claim.get("image_id"),
                               reason=f"file name {record['file_name']!r} is already labelled "
                                      f"{name_claim.get('place_id')!r} with different content")
            elif near:
                best = near[0]
                verdict.update(status=NEAR_DUPLICATE, duplicate_of=best.image_id, near_distance=best.distance,
                               reason=f"pHash within Hamming distance {best.distance} of an accepted image")
            else:
                verdict.update(status=ACCEPTED, reason=None,
                               curated={"path": curated_path(self.settings, record["place_id"], record["image_id"]),
                                        "written": False})
                self.claim_and_index(txn, verdict, claim_file_name=not name_claim.exists)
            txn.create(image_ref, verdict)
            return verdict

        decide(self.db.transaction())
        return image_ref.get(**self.call_options).to_dict()

    def claim_refs(self, record: dict) -> tuple:
        """References of the exact-content (file, pixels) and file-name claims of a record."""
        hashes = record["hashes"]
        claims = self.db.collection(CONTENT_CLAIMS)
        name_key = hashlib.sha256(record["file_name"].encode()).hexdigest()[:32]
        return (claims.document(f"file-{hashes['file_sha256']['hex']}"),
                claims.document(f"pixels-{hashes['pixels_sha256']['hex']}"),
                self.db.collection(FILENAME_CLAIMS).document(name_key))

    def claim_and_index(self, txn: firestore.Transaction, record: dict, claim_file_name: bool) -> None:
        """Within ``txn``: make ``record`` the owner of its content claims and add it to the near index."""
        file_claim_ref, pixel_claim_ref, name_claim_ref = self.claim_refs(record)
        claim = {"image_id": record["image_id"], "place_id": record["place_id"],
                 "file_sha256": record["hashes"]["file_sha256"]["hex"]}
        txn.set(file_claim_ref, claim)
        txn.set(pixel_claim_ref, claim)
        if claim_file_name:
            txn.set(name_claim_ref, dict(claim, file_name=record["file_name"]))
        self.index.add(txn, record["image_id"], record["hashes"]["phash"]["hex"])

    def release_claims(self, txn: firestore.Transaction, record: dict) -> None:
        """Within ``txn``, before any write in it: delete the claims ``record`` owns and its index entry."""
        refs = self.claim_refs(record)
        owned = [ref for ref, snap in zip(refs, txn.get_all(refs))
                 if snap.exists and snap.get("image_id") == record["image_id"]]
        for ref in owned:
            txn.delete(ref)
        self.index.remove(txn, record["image_id"], record["hashes"]["phash"]["hex"])

    def _settle_concurrent_near_duplicates(self, image_ref, record: dict) -> dict:
        """Two near-identical photos may both pass the pre-check at the same moment. Both are indexed; the
        one indexed first wins. The later one committed after the winner, so its re-read here sees the
        winner's entry (they share a band), and it demotes itself."""
        image_id, phash = record["image_id"], record["hashes"]["phash"]["hex"]
        matches = {m.image_id: m for m in self.index.find(phash)}
        mine = matches.pop(image_id, None)
        if mine is None:  # no longer indexed: demoted or reviewed by an earlier delivery
            return image_ref.get(**self.call_options).to_dict()
        earlier = [m for m in matches.values() if m.order < mine.order]
        if not earlier:
            return record
        winner = min(earlier, key=lambda m: m.order)  # the first arrival: it never demotes itself
        batch = self.db.batch()
        batch.update(image_ref, {
            "status": NEAR_DUPLICATE, "duplicate_of": winner.image_id, "near_distance": winner.distance,
            "reason": f"pHash within Hamming distance {winner.distance} of an image accepted moments earlier",
            "curated": firestore.DELETE_FIELD, "updated_at": firestore.SERVER_TIMESTAMP,
        })
        self.index.remove(batch, image_id, phash)
        batch.commit(**self.call_options)
        return image_ref.get(**self.call_options).to_dict()

    def load_source(self, record: dict):
        """Download and decode the exact source generation of a record."""
        source = record["source"]
        blob = self.gcs.bucket(source["bucket"]).get_blob(source["name"], generation=source["generation"])
        if blob is None:
            raise InvalidImage(f"source {source['uri']}#{source['generation']} no longer exists")
        return decode_image(blob.download_as_bytes(), self.limits)

    def write_curated_copy(self, image_ref, record: dict, decoded) -> dict:
        """Create-only upload of the normalised copy (a redelivery finds it there), then mark it written."""
        path = record["curated"]["path"]
        jpeg = encode_curated_jpeg(decoded.rgb, self.settings.curated_max_side, self.settings.curated_jpeg_quality)
        bucket = self.settings.curated_bucket or record["source"]["bucket"]
        blob = self.gcs.bucket(bucket).blob(path)
        try:
            blob.upload_from_string(jpeg, content_type="image/jpeg", if_generation_match=0)
        except gexc.PreconditionFailed:
            pass  # written by an earlier delivery of this event
        curated = {"path": path, "uri": f"gs://{bucket}/{path}", "bucket": bucket, "written": True,
                   "bytes": len(jpeg)}
        image_ref.update({"curated": curated, "updated_at": firestore.SERVER_TIMESTAMP}, **self.call_options)
        return dict(record, curated=curated)
