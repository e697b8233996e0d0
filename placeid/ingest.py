"""Ingestion of one finalized Cloud Storage object: validate, hash, dedupe, label, record, copy.

Retry discipline (Cloud Functions at-least-once delivery): bad input is recorded as ``rejected`` or
``quarantined`` and the handler returns normally; transient infrastructure faults raise
:class:`TransientError` so the platform redelivers, but only while the event is younger than
``max_event_age_s``; after that, and for any unexpected fault at once, the photo is recorded as ``error``.
Every outcome is recorded; every step is idempotent per (bucket, object, generation).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.storage.retry import DEFAULT_RETRY as STORAGE_RETRY
from PIL import Image

from placeid.catalog import INBOX, PLACE_ID
from placeid.config import Settings
from placeid_edge.errors import InvalidImage, TooLarge, TransientError, UnsupportedMediaType
from placeid.images import (
    ACCEPTED,
    DUPLICATE,
    ERROR,
    NEAR_DUPLICATE,
    QUARANTINED,
    REJECTED,
    claim_refs,
    copy_bucket,
    curated_path,
)
from placeid.hashing import (
    WHASH_FLOAT_BYTES,
    WHASH_INTEGER_FROM_SCALE,
    HashValue,
    PHash,
    perceptual_hashes,
    sha256_hash,
    trim_uniform_border,
)
from placeid_edge.imaging import (
    STRIP_BYTES,
    ValidationLimits,
    check_header,
    body_budget,
    configure_decode_budget,
    curated_image,
    decode_budget,
    decode_estimate,
    estimate_decode_bytes,
    decode_image,
    encode_curated_jpeg,
    open_image,
    pixel_sha256,
    reduce_factor,
    sniff_format,
)
from placeid.logs import get_logger, log
from placeid.neardup import FeatureIndex, NearDuplicateIndex
from placeid.registry import Registry
from placeid.serving import ModelCache
from placeid.vetting import LABELLED, Verdict, Vetter
from placeid.store import (
    IMAGES,
    PLACES,
    firestore_call_options,
    firestore_client,
    is_transient,
    storage_client,
)

FINALIZED_EVENT_TYPE = "google.cloud.storage.object.v1.finalized"

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


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters (for reasons and logs: names and labels can be huge)."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def unsafe_name_problem(relative_name: str) -> str | None:
    """Why an object name (below ``raw/``) cannot be trusted to carry a label, or None: ``..``, ``.`` or empty
    path segments, backslashes, control characters."""
    if "\\" in relative_name or any(unicodedata.category(char) == "Cc" for char in relative_name):
        return f"unsafe object name {clip(relative_name)!r}: backslash or control character"
    if any(segment in ("", ".", "..") for segment in relative_name.split("/")):
        return f"unsafe object name {clip(relative_name)!r}: empty, '.' or '..' path segment"
    return None


def label_from(obj: StoredObject, settings: Settings) -> tuple[str | None, str | None, str | None]:
    """(place_id, label_source, problem) from ``raw/<place_id>/...`` and/or the ``place_id`` metadata; a
    label must match the catalog's place-id pattern before it goes anywhere near Firestore. An upload under
    ``raw/inbox/`` or directly under ``raw/`` with no metadata label is unlabelled: (None, None, None)."""
    relative = obj.name[len(settings.raw_prefix):]
    problem = unsafe_name_problem(relative)
    if problem:
        return None, None, problem
    parts = relative.split("/")
    from_path = parts[0] if len(parts) >= 2 and parts[0] != INBOX else None
    from_meta = str(obj.metadata.get("place_id") or "").strip() or None
    for label, source in ((from_path, "path"), (from_meta, "metadata")):
        if label is not None and not PLACE_ID.match(label):
            return None, None, (f"invalid place id {clip(label)!r} in the {source}: "
                                "lowercase letters, digits and '-' only, at most 63")
    if from_path and from_meta and from_path != from_meta:
        return None, None, f"conflicting labels: path says {from_path!r}, metadata says {from_meta!r}"
    if from_path:
        return from_path, "path", None
    if from_meta:
        return from_meta, "metadata", None
    return None, None, None


#: Why an unlabelled photo is quarantined when no model could label it.
NO_LABEL = "no place label: not under raw/<place_id>/ and no place_id metadata, and no model labelled it"


def event_age_s(event_time: str | datetime | None, now: datetime | None = None) -> float | None:
    """Seconds since the CloudEvent's ``time`` (RFC 3339); None when it is missing or unparseable."""
    if isinstance(event_time, str):
        try:
            event_time = datetime.fromisoformat(event_time.strip())
        except ValueError:
            return None
    if not isinstance(event_time, datetime):
        return None
    if event_time.tzinfo is None:
        event_time = event_time.replace(tzinfo=timezone.utc)
    return ((now or datetime.now(timezone.utc)) - event_time).total_seconds()


def ingest_estimate(data: bytes, limits: ValidationLimits, keep_side: int) -> int:
    """Peak bytes decoding and hashing ``data`` at the working size ``keep_side`` needs, from its header: the
    decode (imaging.decode_estimate), or, if more, the working RGB image with the curated copy's intermediate (at
    most a quarter of it) and the greyscale image the perceptual hashes are computed from beside it, or the
    curated image, that greyscale image (with a mask and a crop of it, looking for a border), whash's float arrays
    and a strip's allowance for the allocator. Raises what the header checks raise."""
    if not data:
        return 0  # decode_image says why
    img = open_image(data)
    check_header(img, limits)
    decode = decode_estimate(img, keep_side)  # drafts a JPEG: img.size is then its decoded size
    factor = reduce_factor(img, keep_side)
    width, height = -(-img.size[0] // factor), -(-img.size[1] // factor)
    scale = 2 ** int(math.log2(min(width, height)))
    whash = WHASH_FLOAT_BYTES * scale * scale if scale <= WHASH_INTEGER_FROM_SCALE else 0
    hashing = 4 * keep_side * keep_side + 3 * width * height + whash + STRIP_BYTES
    return max(decode, estimate_decode_bytes(width, height, "RGB") + 2 * width * height, hashing)


#: Ingest's decode budget unless PLACEID_DECODE_BUDGET_MB says otherwise. Photos are decoded at a working size
#: (the curated side, ``curated_max_side``, on the shorter side): every JPEG the pixel limit allows needs under
#: about 50 MiB; PNG/WebP/HEIF images are decoded in full before they are reduced, and fit up to about 19.5 MP in
#: 4 bytes per pixel (RGB, RGBA), 28 MP at 16 bits, 40 MP in palette or greyscale; larger ones are rejected from
#: their header with the reason. With the process's own ~100 MiB, the served model's ~25 MiB (placeid.vetting) and
#: the downloads' budget this keeps an ingest instance at its deployed concurrency under 250 MiB
#: (bench/hostile_bench.py; infra/README.md, Sizing).
DEFAULT_BUDGET_BYTES = 104 * 2**20
#: Downloaded photos held at once (PLACEID_BODY_BUDGET_MB unless set): this many of the largest allowed (bytes:
#: several photos of a few MB fit at once).
BODIES_IN_FLIGHT = 1


def decode_and_hash(data: bytes, limits: ValidationLimits, keep_side: int) -> tuple[Image.Image, dict]:
    """Decode ``data`` at its working size (a photo larger than needed is decoded reduced, never below
    ``keep_side``, the curated side, on its shorter side), hash it and shrink it to the curated size: the curated
    image and the record's fields (format, sizes, EXIF orientation, pixel and perceptual hashes). Working-size
    pixels exist only inside this call."""
    decoded = decode_image(data, limits, keep_side=keep_side)
    width, height = decoded.oriented_source_size
    fields = dict(format=decoded.format, source_mode=decoded.source_mode, frames=decoded.frames,
                  exif_orientation=decoded.orientation, width=width, height=height, hashed_size=list(decoded.size))
    rgb = decoded.rgb
    del decoded
    hashes = {"pixels_sha256": HashValue("sha256", 256, pixel_sha256(rgb), "hashlib").to_dict()}
    curated = curated_image(rgb, keep_side)
    grey = rgb.convert("L")  # what every perceptual hash starts from; the working RGB can go
    rgb.close()
    del rgb
    hashes.update({k: v.to_dict() for k, v in perceptual_hashes(grey).items()})
    trimmed = trim_uniform_border(grey)  # a mask and a crop of the greyscale image, for a moment
    if trimmed is not None:
        hashes["phash_trimmed"] = PHash().hash_image(trimmed).to_dict()
    return curated, dict(fields, hashes=hashes)


def photo_phash(data: bytes, settings: Settings) -> str:
    """The pHash ingest records for these bytes (same validation, EXIF orientation and working size): what offline
    training groups near duplicates by, so that both group them alike."""
    decoded = decode_image(data, ValidationLimits.from_settings(settings), keep_side=settings.curated_max_side)
    return PHash().hash_image(decoded.rgb).hex


class StepTimes:
    """Milliseconds each step of one event took (logged with its outcome: where an event's time goes)."""

    def __init__(self):
        self.ms: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        """Charge the time since the previous lap to ``step``."""
        now = time.perf_counter()
        self.ms[step] = round(self.ms.get(step, 0.0) + (now - self._last) * 1000, 1)
        self._last = now


def describe_failure(exc: BaseException, limit: int = 500) -> str:
    """``Type: message`` of an exception, truncated (what an ``error`` record's reason says)."""
    return clip(f"{type(exc).__name__}: {exc}", limit)


class Ingestor:
    """Processes finalize events for one bucket layout; holds the (reused) Google Cloud clients."""

    def __init__(self, settings: Settings | None = None, max_event_age_s: float | None = None):
        self.settings = settings or Settings.from_env()
        self.max_event_age_s = (max_event_age_s if max_event_age_s is not None
                                else self.settings.max_event_age_s)
        self.db = firestore_client(self.settings.project)
        self.gcs = storage_client(self.settings.project)
        self.call_options = firestore_call_options(self.settings)
        timeout_s = self.settings.firestore_timeout_s  # Storage calls are bounded by the same deadline
        self.storage_options = {"retry": STORAGE_RETRY.with_timeout(timeout_s), "timeout": timeout_s}
        self.limits = ValidationLimits.from_settings(self.settings)
        configure_decode_budget(self.settings.decode_budget_mb, self.settings.ingest_decode_wait_s,
                                auto_bytes=DEFAULT_BUDGET_BYTES, body_mb=self.settings.body_budget_mb,
                                body_auto_bytes=BODIES_IN_FLIGHT * self.settings.max_object_bytes)
        self.index = NearDuplicateIndex(self.db, self.settings.near_dup_distance, self.call_options)
        self.features_index = FeatureIndex(self.db, self.settings.near_dup_cosine,
                                           self.settings.near_dup_loose_distance, self.call_options)
        registry = Registry(self.db, self.gcs.bucket(self.settings.models_bucket_name))
        self.vetter = Vetter(self.settings, ModelCache(self.settings, registry))
        self._known_places: dict[str, float] = {}

    # -- entry points -------------------------------------------------------------------------

    def handle_event(self, event_type: str, data: dict, event_time: str | datetime | None = None) -> dict | None:
        """Handle one CloudEvent (``event_time``: its ``time``); returns the image record, or None when the
        event is not for us or nothing could be recorded."""
        obj = self._object_of(event_type, data)
        if obj is None:
            return None
        started = time.perf_counter()
        steps = StepTimes()
        try:
            record = self.ingest(obj, steps)
        except Exception as exc:  # noqa: BLE001 - every failure ends retried (young, transient) or recorded
            record = self._after_failure(obj, exc, event_age_s(event_time))
            if record is None:
                return None
        log(logger, logging.INFO, "ingested", object=obj.uri, generation=obj.generation,
            image_id=obj.record_id, status=record["status"], reason=record.get("reason"),
            place_id=record.get("place_id"), duration_ms=round((time.perf_counter() - started) * 1000, 1),
            steps_ms=steps.ms)
        return record

    def _object_of(self, event_type: str, data: dict) -> StoredObject | None:
        """The object a finalize event names, or None (logged) when the event is not one for us."""
        if event_type != FINALIZED_EVENT_TYPE:
            log(logger, logging.INFO, "ignored event type", event_type=event_type)
            return None
        try:
            obj = StoredObject.from_event_data(data)
        except ValueError as exc:  # a malformed event never gets better: drop it, loudly
            log(logger, logging.ERROR, "dropped malformed storage event", error=str(exc))
            return None
        if obj.bucket != self.settings.bucket:
            log(logger, logging.WARNING, "ignored event for another bucket", object=obj.uri,
                raw_bucket=self.settings.bucket)
            return None
        if not obj.name.startswith(self.settings.raw_prefix) or obj.name.endswith("/"):
            log(logger, logging.INFO, "ignored object outside raw/", object=obj.uri)
            return None
        return obj

    def _after_failure(self, obj: StoredObject, exc: Exception, age_s: float | None) -> dict | None:
        """A transient fault of a young event raises (the platform redelivers); any other fault, or a transient
        one older than ``max_event_age_s``, is recorded as ``error``. If that record cannot be written, a young
        event raises again and an old one is given up (logged)."""
        transient = isinstance(exc, TransientError) or is_transient(exc)
        old = age_s is not None and age_s > self.max_event_age_s
        where = {"object": obj.uri, "generation": obj.generation, "image_id": obj.record_id}
        if transient and not old:
            log(logger, logging.WARNING, "transient failure, event will be retried", error=repr(exc), **where)
            raise TransientError(f"transient failure ingesting {obj.uri}: {exc}") from exc
        reason = describe_failure(exc)
        if transient:
            reason = f"gave up after retries for {age_s:.0f} s: {reason}"
        logger.error("ingestion failed, recording an error", exc_info=exc, extra={"fields": dict(where, reason=reason)})
        try:
            return self.record_error(obj, reason)
        except Exception as record_exc:  # noqa: BLE001
            if not old:
                raise TransientError(f"cannot record the failure of {obj.uri}: {record_exc}") from exc
            log(logger, logging.ERROR, "gave up: event too old and its failure cannot be recorded",
                error=describe_failure(record_exc), reason=reason, **where)
            return None

    def ingest(self, obj: StoredObject, steps: StepTimes | None = None) -> dict:
        """Process one object generation; idempotent. ``steps`` collects the time each step took."""
        lap = (steps or StepTimes()).lap
        image_ref = self.db.collection(IMAGES).document(obj.record_id)
        existing = image_ref.get(**self.call_options)
        lap("read_record")
        if existing.exists:
            record = existing.to_dict()
            if record["status"] != ACCEPTED or record.get("curated", {}).get("written"):
                return record  # redelivery of finished work

        record = self._base_record(obj)
        blob = self.gcs.bucket(obj.bucket).get_blob(obj.name, generation=obj.generation, **self.storage_options)
        lap("object_metadata")
        if blob is None:
            return self._commit_final(image_ref, record, REJECTED, "object generation no longer exists")
        record["size_bytes"] = blob.size
        record["content_type"] = blob.content_type
        if blob.size is not None and blob.size > self.settings.max_object_bytes:
            return self._commit_final(image_ref, record, REJECTED,
                                      f"file too large: {blob.size} bytes > limit {self.settings.max_object_bytes}")
        # The download is held until its pixels are hashed: reserved first (before the decode's reservation).
        with body_budget.reserve(blob.size or self.settings.max_object_bytes, "the download"):
            try:
                data = blob.download_as_bytes(**self.storage_options)
            except gexc.NotFound:  # overwritten or deleted since the metadata read
                return self._commit_final(image_ref, record, REJECTED, "object generation no longer exists")
            lap("download")
            record["hashes"] = {"file_sha256": sha256_hash(data).to_dict()}
            try:
                curated = self._decode_and_hash(data, record)
            except (InvalidImage, UnsupportedMediaType, TooLarge) as exc:
                record["format"] = sniff_format(data)
                return self._commit_final(image_ref, record, REJECTED, exc.message)
            del data  # from here on only the hashes and the small curated image are held
            lap("decode_hash")

        place_id, label_source, problem = label_from(obj, self.settings)
        if place_id and not problem and not self.place_exists(place_id):
            problem = f"unknown place id {place_id!r}"
        lap("label")
        opinion = None
        if not problem:
            place_id, label_source, problem, opinion = self._vet(record, curated, place_id, label_source)
            lap("model")
        record.update(place_id=place_id, label_source=label_source)

        record = self._decide_and_commit(image_ref, record, problem, opinion, lap)
        lap("decide_commit")
        if record["status"] == ACCEPTED:
            record = self._settle_concurrent_near_duplicates(image_ref, record)
            lap("settle")
        if record["status"] == ACCEPTED:
            record = self.write_curated_copy(image_ref, record, curated)
            lap("curated_copy")
        return record

    def _vet(self, record: dict, curated, place_id: str | None,
             label_source: str | None) -> tuple[str | None, str | None, str | None, Verdict]:
        """The serving model's verdict on the photo (``record["vetting"]``), and the (place_id, label_source,
        problem) that follow: an unlabelled photo the model is sure of takes its label; a suspect or an unsure
        photo gets the reason it is quarantined for; an unlabelled one no model could label, NO_LABEL."""
        verdict = self.vetter.vet(curated, place_id)
        record["vetting"] = verdict.record
        if verdict.outcome == LABELLED:
            if not self.place_exists(verdict.place_id):
                return None, None, f"the model's label {verdict.place_id!r} is not in the catalog", verdict
            return verdict.place_id, "model", None, verdict
        if verdict.quarantine:
            return place_id, label_source, verdict.reason, verdict
        return place_id, label_source, None if place_id else NO_LABEL, verdict

    def _decode_and_hash(self, data: bytes, record: dict):
        """:func:`decode_and_hash` within the process's decode memory budget (reserved from the header's
        estimate, :func:`ingest_estimate`); fills ``record`` and returns the curated-size image."""
        keep_side = self.settings.curated_max_side
        with decode_budget.reserve(ingest_estimate(data, self.limits, keep_side), "image"):
            curated, fields = decode_and_hash(data, self.limits, keep_side)
        hashes = fields.pop("hashes")
        record.update(fields)
        record["hashes"].update(hashes)
        return curated

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

    def place_exists(self, place_id: str, ttl_s: float = 60.0) -> bool:
        """Whether the catalog has ``place_id`` (a known one is remembered for ``ttl_s``)."""
        if time.monotonic() - self._known_places.get(place_id, -ttl_s) < ttl_s:
            return True
        if not PLACE_ID.match(place_id):  # Firestore refuses some ids (``__x__``, long ones): never ask it
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

    def record_error(self, obj: StoredObject, reason: str) -> dict:
        """Record that ``obj`` could not be ingested (status ``error``, without its metadata: it may be what
        Firestore refused). An existing accepted record whose copy was never written is demoted to ``error``
        and gives up its claims; other existing records are finished work and stay as they are."""
        image_ref = self.db.collection(IMAGES).document(obj.record_id)
        record = dict(self._base_record(obj), metadata={}, status=ERROR, reason=reason)
        try:
            image_ref.create(record, **self.call_options)
        except gexc.AlreadyExists:
            self._demote_unfinished(image_ref, reason)
        return image_ref.get(**self.call_options).to_dict()

    def _demote_unfinished(self, image_ref, reason: str) -> None:
        @firestore.transactional
        def demote(txn: firestore.Transaction) -> None:
            current = image_ref.get(transaction=txn).to_dict()
            if current["status"] != ACCEPTED or current.get("curated", {}).get("written"):
                return
            self.release_claims(txn, current)
            txn.update(image_ref, {"status": ERROR, "reason": reason, "curated": firestore.DELETE_FIELD,
                                   "updated_at": firestore.SERVER_TIMESTAMP})

        demote(self.db.transaction())

    def _decide_and_commit(self, image_ref, record: dict, label_problem: str | None,
                           opinion: Verdict | None = None, lap=None) -> dict:
        """In one transaction: exact-duplicate and file-name claims, near-duplicate verdict, record. ``opinion``:
        the served model's verdict, whose features are the second near-duplicate vote; ``lap``: StepTimes.lap."""
        lap = lap or (lambda step: None)
        file_sha = record["hashes"]["file_sha256"]["hex"]
        file_claim_ref, pixel_claim_ref, name_claim_ref = claim_refs(self.db, record)
        near, how = ([], "") if label_problem else self._near_duplicates(record["hashes"], opinion, lap)

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
                               reason=f"{how} within Hamming distance {best.distance} of an accepted image")
            else:
                verdict.update(status=ACCEPTED, reason=None,
                               curated={"path": curated_path(self.settings, record["place_id"], record["image_id"]),
                                        "written": False})
                self.claim_and_index(txn, verdict, claim_file_name=not name_claim.exists, opinion=opinion)
            txn.create(image_ref, verdict)
            return verdict

        decide(self.db.transaction())
        return image_ref.get(**self.call_options).to_dict()

    def _near_duplicates(self, hashes: dict, opinion: Verdict | None, lap) -> tuple[list, str]:
        """Accepted images near this photo, and how they were found: by its pHash, or else by its mirror image's
        (a mirrored copy of an accepted photo), or else by the pHash of the photo without its uniform border (an
        accepted photo re-posted with a frame), or else by two votes together: the served model's features and a
        looser pHash distance (a crop, a tilt: neardup.FeatureIndex)."""
        lookups = [(key, how) for key, how in (("phash", "pHash"), ("phash_mirror", "the mirror image's pHash"),
                                               ("phash_trimmed", "the pHash without its border")) if key in hashes]
        mine = [hashes[key]["hex"] for key, _ in lookups]
        # The mirrored and borderless pHashes are looked up under their own band keys only (a fraction of the reads)
        found = self.index.find_each(mine, exact_bands=[key != "phash" for key, _ in lookups])
        lap("near_hashes")
        for (_, how), near in zip(lookups, found):
            if near:
                return near, how
        if opinion is None or opinion.features is None:
            return [], ""
        try:
            near = self.features_index.find(opinion.features, opinion.record["model_version"], mine)
        except (gexc.FailedPrecondition, gexc.InvalidArgument) as exc:  # no vector index of this model's size
            log(logger, logging.WARNING, "near-duplicate features lookup failed; pHash votes only", error=str(exc))
            return [], ""
        finally:
            lap("near_features")
        return near, f"the model's features (cosine {near[0].cosine:.2f}) and a pHash" if near else ""

    def claim_and_index(self, txn: firestore.Transaction, record: dict, claim_file_name: bool | None = None,
                        opinion: Verdict | None = None) -> None:
        """Within ``txn``: make ``record`` the owner of its content claims and add it to the near indexes (the
        features one when the model's ``opinion`` has features); its file name too when ``claim_file_name`` (None:
        when no other image claims that name yet, read within ``txn``, so before any write in it)."""
        file_claim_ref, pixel_claim_ref, name_claim_ref = claim_refs(self.db, record)
        if claim_file_name is None:
            claim_file_name = not name_claim_ref.get(transaction=txn).exists
        claim = {"image_id": record["image_id"], "place_id": record["place_id"],
                 "file_sha256": record["hashes"]["file_sha256"]["hex"]}
        txn.set(file_claim_ref, claim)
        txn.set(pixel_claim_ref, claim)
        if claim_file_name:
            txn.set(name_claim_ref, dict(claim, file_name=record["file_name"]))
        self.index.add(txn, record["image_id"], record["hashes"]["phash"]["hex"])
        if opinion is not None and opinion.features is not None:
            self.features_index.add(txn, record["image_id"], opinion.features, opinion.record["model_version"],
                                    record["hashes"]["phash"]["hex"])

    def release_claims(self, txn: firestore.Transaction, record: dict) -> None:
        """Within ``txn``, before any write in it: delete the claims ``record`` owns and its index entry."""
        refs = claim_refs(self.db, record)
        owned = [ref for ref, snap in zip(refs, txn.get_all(refs))
                 if snap.exists and snap.get("image_id") == record["image_id"]]
        for ref in owned:
            txn.delete(ref)
        self.index.remove(txn, record["image_id"], record["hashes"]["phash"]["hex"])
        self.features_index.remove(txn, record["image_id"])

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
        self.features_index.remove(batch, image_id)
        batch.commit(**self.call_options)
        return image_ref.get(**self.call_options).to_dict()

    def load_source(self, record: dict):
        """Download and decode the exact source generation of a record."""
        source = record["source"]
        blob = self.gcs.bucket(source["bucket"]).get_blob(source["name"], generation=source["generation"],
                                                          **self.storage_options)
        if blob is None:
            raise InvalidImage(f"source {source['uri']}#{source['generation']} no longer exists")
        return decode_image(blob.download_as_bytes(**self.storage_options), self.limits,
                            keep_side=self.settings.curated_max_side)

    def write_curated_copy(self, image_ref, record: dict, rgb) -> dict:
        """Create-only upload of the normalised copy of the RGB image ``rgb`` (a redelivery finds it there), then
        mark it written."""
        path = record["curated"]["path"]
        jpeg = encode_curated_jpeg(rgb, self.settings.curated_max_side, self.settings.curated_jpeg_quality)
        bucket = copy_bucket(self.settings, record)
        blob = self.gcs.bucket(bucket).blob(path)
        try:
            blob.upload_from_string(jpeg, content_type="image/jpeg", if_generation_match=0, **self.storage_options)
        except gexc.PreconditionFailed:
            pass  # written by an earlier delivery of this event
        curated = {"path": path, "uri": f"gs://{bucket}/{path}", "bucket": bucket, "written": True,
                   "bytes": len(jpeg)}
        image_ref.update({"curated": curated, "updated_at": firestore.SERVER_TIMESTAMP}, **self.call_options)
        return dict(record, curated=curated)
