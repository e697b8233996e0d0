"""Review (the paper's "second classification"): list quarantined and near-duplicate images, then
accept, reject or relabel them, keeping Firestore records, claims, the near index and ``curated/`` consistent;
re-score the collection with the serving model after a promote (:meth:`Reviewer.rescan`)."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from placeid_edge.errors import BadRequest, NotFound
from placeid.images import ACCEPTED, NEAR_DUPLICATE, QUARANTINED, REJECTED, STATUSES, curated_bucket, curated_path
from placeid.ingest import Ingestor
from placeid.store import IMAGES
from placeid.vetting import REJECT, SUSPECT, UNSURE, Verdict, auto_label_threshold, judge
from placeid_edge.bundle import Bundle
from placeid_edge.errors import PlaceidError
from PIL import Image

REVIEWABLE = (QUARANTINED, NEAR_DUPLICATE)


class Reviewer:
    """Review actions over the records an :class:`Ingestor` wrote."""

    def __init__(self, ingestor: Ingestor | None = None):
        self.ingestor = ingestor or Ingestor()
        self.db = self.ingestor.db
        self.images = self.db.collection(IMAGES)

    def list(self, statuses: tuple[str, ...] = REVIEWABLE, limit: int = 500) -> list[dict]:
        """Records waiting for review, oldest first."""
        unknown = set(statuses) - set(STATUSES)
        if unknown:
            raise BadRequest(f"unknown status {', '.join(sorted(unknown))}")
        query = (self.images.where(filter=FieldFilter("status", "in", list(statuses)))
                 .order_by("created_at").limit(limit))  # composite index: placeid/store.py COMPOSITE_INDEXES
        return [snap.to_dict() for snap in query.stream()]

    def get(self, image_id: str) -> dict:
        snap = self.images.document(image_id).get()
        if not snap.exists:
            raise NotFound(f"no image {image_id!r}")
        return snap.to_dict()

    def _require_place(self, place_id: str) -> None:
        if not self.ingestor.place_exists(place_id):
            raise BadRequest(f"unknown place id {place_id!r}")

    @staticmethod
    def _history(action: str, record: dict, **details) -> dict:
        return {"action": action, "at": datetime.now(timezone.utc), "from_status": record["status"],
                "from_place_id": record.get("place_id"), **details}

    def accept(self, image_id: str, place_id: str | None = None, note: str = "") -> dict:
        """Accept a quarantined or near-duplicate image (optionally under another place)."""
        record = self.get(image_id)
        if record["status"] not in REVIEWABLE:
            raise BadRequest(f"image {image_id} is {record['status']}; only {', '.join(REVIEWABLE)} can be accepted")
        place_id = place_id or record.get("place_id")
        if not place_id:
            raise BadRequest(f"image {image_id} has no place label: pass a place id")
        self._require_place(place_id)
        decoded = self.ingestor.load_source(record)
        accepted = dict(record, place_id=place_id, status=ACCEPTED,
                        curated={"path": curated_path(self.ingestor.settings, place_id, image_id), "written": False})
        ref = self.images.document(image_id)

        @firestore.transactional
        def commit(txn):
            current = ref.get(transaction=txn).to_dict()
            if current["status"] != record["status"]:
                raise BadRequest(f"image {image_id} changed while reviewing (now {current['status']})")
            self.ingestor.claim_and_index(txn, accepted)
            txn.update(ref, {
                "status": ACCEPTED, "reason": None, "duplicate_of": None, "place_id": place_id,
                "label_source": "review" if place_id != record.get("place_id") else record.get("label_source"),
                "curated": accepted["curated"], "updated_at": firestore.SERVER_TIMESTAMP,
                "review": firestore.ArrayUnion([self._history("accept", record, to_place_id=place_id, note=note)]),
            })

        commit(self.db.transaction())
        return self.ingestor.write_curated_copy(ref, self.get(image_id), decoded.rgb)

    def reject(self, image_id: str, reason: str) -> dict:
        """Reject an image; an accepted one loses its claims, index entry and curated copy."""
        if not reason:
            raise BadRequest("a reason is required to reject")
        return self._set_aside(image_id, REJECTED, f"review: {reason}", "reject", reason)

    def quarantine(self, image_id: str, reason: str, changes: dict | None = None) -> dict:
        """Send an image (back) to review, as ``quarantined``, with ``reason``; an accepted one loses its claims,
        index entry and curated copy; ``changes``: more fields to set on the record."""
        return self._set_aside(image_id, QUARANTINED, reason, "quarantine", reason, changes)

    def _set_aside(self, image_id: str, status: str, reason: str, action: str, note: str,
                   changes: dict | None = None) -> dict:
        record = self.get(image_id)
        ref = self.images.document(image_id)

        @firestore.transactional
        def commit(txn):
            current = ref.get(transaction=txn).to_dict()
            if current["status"] != record["status"]:
                raise BadRequest(f"image {image_id} changed while reviewing (now {current['status']})")
            if record["status"] == ACCEPTED:
                self.ingestor.release_claims(txn, record)
            txn.update(ref, {
                "status": status, "reason": reason, "curated": firestore.DELETE_FIELD,
                "updated_at": firestore.SERVER_TIMESTAMP,
                "review": firestore.ArrayUnion([self._history(action, record, note=note)]), **(changes or {}),
            })

        commit(self.db.transaction())
        self._delete_curated(record)
        return self.get(image_id)

    def relabel(self, image_id: str, place_id: str, note: str = "") -> dict:
        """Change an image's place; an accepted image's curated copy moves to the new place's folder."""
        self._require_place(place_id)
        record = self.get(image_id)
        if record.get("place_id") == place_id:
            return record
        ref = self.images.document(image_id)
        update = {"place_id": place_id, "label_source": "review", "updated_at": firestore.SERVER_TIMESTAMP,
                  "review": firestore.ArrayUnion([self._history("relabel", record, to_place_id=place_id, note=note)])}
        if record["status"] == ACCEPTED and record.get("curated", {}).get("written"):
            bucket = self.ingestor.gcs.bucket(curated_bucket(record))
            new_path = curated_path(self.ingestor.settings, place_id, image_id)
            source_blob = bucket.blob(record["curated"]["path"])
            try:
                bucket.copy_blob(source_blob, bucket, new_path, if_generation_match=0)
            except gexc.PreconditionFailed:
                pass  # copied by an earlier, interrupted relabel
            update["curated"] = dict(record["curated"], path=new_path, uri=f"gs://{bucket.name}/{new_path}")
        ref.update(update)
        if "curated" in update:
            self._delete_curated(record)
        return self.get(image_id)

    def _delete_curated(self, record: dict) -> None:
        path = (record.get("curated") or {}).get("path")
        if not path:
            return
        try:
            self.ingestor.gcs.bucket(curated_bucket(record)).blob(path).delete()
        except gexc.NotFound:
            pass

    # -- the model's second look -------------------------------------------------------------------

    def rescan(self, bundle: Bundle, batch_size: int = 32,
               progress: Callable[[int, int], None] | None = None) -> Counter:
        """Re-score the collection with ``bundle`` (the model just promoted): every accepted image, and every
        image quarantined by vetting or for want of a label. Resumable: an image this model already scored is
        skipped, so an interrupted rescan goes on where it stopped. An accepted image the model now flags
        ``suspect`` is quarantined with its suggestion; every other image keeps its status, with the model's fresh
        answer and suggestion in ``vetting`` (a quarantined one is decided in review: :meth:`apply_suggestion`),
        and an accepted one's features go into the near-duplicate features index under the new model.
        Returns the count of each action; ``progress(done, total)`` after each batch."""
        candidates = self._rescan_candidates()
        pending = [r for r in candidates if (r.get("vetting") or {}).get("model_version") != bundle.version]
        threshold = auto_label_threshold(bundle)
        actions: Counter = Counter({"already scored by this model": len(candidates) - len(pending)})
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            loaded = list(self._rescan_images(batch))
            readable = [(record, image) for record, image in loaded if image is not None]
            actions["unreadable"] += len(loaded) - len(readable)
            predictions = bundle.predict_batch([image for _, image in readable], top_k=self.ingestor.settings.top_k)
            for (record, _), prediction in zip(readable, predictions):
                label = record.get("place_id") if record.get("label_source") else None
                actions[self._apply(record, judge(prediction, label, threshold))] += 1
            if progress:
                progress(min(start + batch_size, len(pending)), len(pending))
        return +actions

    def _rescan_candidates(self) -> list[dict]:
        """Accepted images, and quarantined ones that vetting quarantined or that have no label."""
        fields = ["image_id", "status", "reason", "place_id", "label_source", "vetting", "source", "curated", "hashes"]
        found = []
        for status in (ACCEPTED, QUARANTINED):
            query = self.images.where(filter=FieldFilter("status", "==", status)).select(fields)
            for snap in query.stream():
                record = snap.to_dict()
                if status == ACCEPTED or not record.get("label_source") or (record.get("vetting") or {}).get(
                        "outcome") in (SUSPECT, UNSURE):
                    found.append(record)
        return found

    def image(self, record: dict) -> Image.Image:
        """The RGB image of a record: its curated copy, else its source decoded within ingest's limits."""
        curated = record.get("curated") or {}
        if not curated.get("written"):
            return self.ingestor.load_source(record).rgb
        data = self.ingestor.gcs.bucket(curated_bucket(record)).blob(curated["path"]).download_as_bytes(
            **self.ingestor.storage_options)
        return Image.open(io.BytesIO(data)).convert("RGB")

    def _rescan_images(self, records: list[dict]) -> Iterator[tuple[dict, Image.Image | None]]:
        """Each record with the image the model sees (:meth:`image`; None: unreadable)."""
        for record in records:
            try:
                yield record, self.image(record)
            except (gexc.NotFound, PlaceidError):
                yield record, None

    def _apply(self, record: dict, verdict: Verdict) -> str:
        """Act on a rescan verdict; returns what was done."""
        image_id, status = record["image_id"], record["status"]
        changes = {"vetting": verdict.record}
        if verdict.outcome == SUSPECT and status == ACCEPTED:
            try:
                self.quarantine(image_id, verdict.reason, changes)
            except BadRequest:
                return "skipped: changed meanwhile"
            return "quarantined as suspect"
        update = dict(changes, updated_at=firestore.SERVER_TIMESTAMP)
        if status == QUARANTINED and verdict.reason:
            update["reason"] = verdict.reason
        ref = self.images.document(image_id)

        @firestore.transactional
        def commit(txn) -> bool:
            if ref.get(transaction=txn).get("status") != status:
                return False
            txn.update(ref, update)
            if status == ACCEPTED and verdict.features is not None:  # the features vote follows the served model
                self.ingestor.features_index.add(txn, image_id, verdict.features, verdict.record["model_version"],
                                                 record["hashes"]["phash"]["hex"])
            return True

        if not commit(self.db.transaction()):
            return "skipped: changed meanwhile"
        return f"kept {status}" + (f" ({verdict.outcome})" if status == QUARANTINED else "")

    def apply_suggestion(self, image_id: str, note: str = "") -> dict:
        """Do what the model suggested for a quarantined image: accept it (under the suggested place), relabel and
        accept it, or reject it."""
        record = self.get(image_id)
        suggestion = (record.get("vetting") or {}).get("suggestion")
        if record["status"] != QUARANTINED or not suggestion:
            raise BadRequest(f"image {image_id} is {record['status']} with no suggestion from the model")
        if suggestion["action"] == REJECT:
            return self.reject(image_id, note or "the model sees no known place")
        return self.accept(image_id, suggestion["place_id"], note or f"the model's suggestion ({suggestion['action']})")
