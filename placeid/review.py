"""Review (the paper's "second classification"): list quarantined and near-duplicate images, then
accept, reject or relabel them, keeping Firestore records, claims, the near index and ``curated/`` consistent."""

from __future__ import annotations

from datetime import datetime, timezone

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from placeid_edge.errors import BadRequest, NotFound
from placeid.images import ACCEPTED, NEAR_DUPLICATE, QUARANTINED, REJECTED, STATUSES, curated_bucket, curated_path
from placeid.ingest import Ingestor
from placeid.store import IMAGES

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
        record = self.get(image_id)
        ref = self.images.document(image_id)

        @firestore.transactional
        def commit(txn):
            if record["status"] == ACCEPTED:
                self.ingestor.release_claims(txn, record)
            txn.update(ref, {
                "status": REJECTED, "reason": f"review: {reason}", "curated": firestore.DELETE_FIELD,
                "updated_at": firestore.SERVER_TIMESTAMP,
                "review": firestore.ArrayUnion([self._history("reject", record, note=reason)]),
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
