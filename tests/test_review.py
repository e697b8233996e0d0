"""Review keeps Firestore and the bucket consistent: accept, reject and relabel."""

from __future__ import annotations

import pytest

from placeid_edge.errors import BadRequest
from placeid.ingest import Ingestor, StoredObject
from placeid.review import Reviewer
from tests.events import upload


def curated(bucket) -> list[str]:
    return sorted(b.name for b in bucket.list_blobs(prefix="curated/"))


@pytest.fixture
def ingestor(catalog):
    return Ingestor()


def ingest(ingestor, bucket, name, data, metadata=None):
    return ingestor.ingest(StoredObject.from_event_data(upload(bucket, name, data, metadata)))


def test_accept_quarantined_under_a_place(ingestor, db, bucket, world30_photos):
    record = ingest(ingestor, bucket, "raw/atlantis/a.jpg", world30_photos["petra"][0].read_bytes())
    assert record["status"] == "quarantined"
    reviewer = Reviewer(ingestor)
    assert [r["image_id"] for r in reviewer.list()] == [record["image_id"]]
    with pytest.raises(BadRequest, match="unknown place"):
        reviewer.accept(record["image_id"])
    accepted = reviewer.accept(record["image_id"], place_id="petra", note="it is Petra")
    assert accepted["status"] == "accepted" and accepted["place_id"] == "petra"
    assert curated(bucket) == [f"curated/petra/{record['image_id']}.jpg"]
    stored = reviewer.get(record["image_id"])
    assert stored["label_source"] == "review" and stored["review"][0]["action"] == "accept"
    assert reviewer.list() == []
    # Now it is the owner of its content: an identical upload is a duplicate of it.
    again = ingest(ingestor, bucket, "raw/petra/copy.jpg", world30_photos["petra"][0].read_bytes())
    assert again["status"] == "duplicate" and again["duplicate_of"] == record["image_id"]


def test_reject_accepted_removes_copy_and_claims(ingestor, db, bucket, world30_photos):
    data = world30_photos["louvre"][0].read_bytes()
    record = ingest(ingestor, bucket, "raw/louvre/a.jpg", data)
    reviewer = Reviewer(ingestor)
    rejected = reviewer.reject(record["image_id"], reason="a poster, not the building")
    assert rejected["status"] == "rejected" and rejected["reason"] == "review: a poster, not the building"
    assert curated(bucket) == []
    assert ingestor.index.find(rejected["hashes"]["phash"]["hex"]) == []
    assert list(db.collection("content_claims").stream()) == []
    # The same photo uploaded again is judged afresh, not as a duplicate of a rejected image.
    again = ingest(ingestor, bucket, "raw/louvre/b.jpg", data)
    assert again["status"] == "accepted"


def test_relabel_accepted_moves_curated_copy(ingestor, db, bucket, world30_photos):
    record = ingest(ingestor, bucket, "raw/louvre/x.jpg", world30_photos["les-invalides"][0].read_bytes())
    reviewer = Reviewer(ingestor)
    moved = reviewer.relabel(record["image_id"], "les-invalides")
    assert moved["place_id"] == "les-invalides" and moved["status"] == "accepted"
    assert curated(bucket) == [f"curated/les-invalides/{record['image_id']}.jpg"]
    with pytest.raises(BadRequest):
        reviewer.relabel(record["image_id"], "nowhere")


def test_accept_near_duplicate(ingestor, db, bucket, world30_photos):
    import io

    from PIL import Image

    path = world30_photos["petra"][2]
    first = ingest(ingestor, bucket, "raw/petra/first.jpg", path.read_bytes())
    smaller = io.BytesIO()
    Image.open(path).resize((160, 120)).save(smaller, "JPEG")
    second = ingest(ingestor, bucket, "raw/petra/second.jpg", smaller.getvalue())
    assert second["status"] == "near_duplicate" and second["duplicate_of"] == first["image_id"]
    reviewer = Reviewer(ingestor)
    assert reviewer.accept(second["image_id"])["status"] == "accepted"
    assert len(curated(bucket)) == 2
    with pytest.raises(BadRequest, match="only quarantined, near_duplicate"):
        reviewer.accept(first["image_id"])
