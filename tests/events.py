"""Building storage CloudEvents the way Eventarc delivers them, with the ``cloudevents`` SDK."""

from __future__ import annotations

import uuid

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

FINALIZED = "google.cloud.storage.object.v1.finalized"


def storage_event(blob_resource: dict, event_type: str = FINALIZED) -> CloudEvent:
    """A CloudEvent whose data is the object resource (as the Storage JSON API returns it)."""
    return CloudEvent(
        {
            "id": str(uuid.uuid4()),
            "specversion": "1.0",
            "type": event_type,
            "source": f"//storage.googleapis.com/projects/_/buckets/{blob_resource['bucket']}",
            "subject": f"objects/{blob_resource['name']}",
            "datacontenttype": "application/json",
        },
        blob_resource,
    )


def post_event(client, event: CloudEvent):
    """POST in binary content mode, as Eventarc does; returns the test client's response."""
    headers, body = to_binary(event)
    return client.post("/", headers=headers, data=body)


def upload(bucket, name: str, data: bytes, metadata: dict | None = None, content_type: str = "image/jpeg") -> dict:
    """Upload an object and return its resource (what the finalize event carries)."""
    blob = bucket.blob(name)
    blob.metadata = metadata
    blob.upload_from_string(data, content_type=content_type)
    return resource_of(blob)


def resource_of(blob) -> dict:
    """The object resource fields a finalize event carries."""
    return {"bucket": blob.bucket.name, "name": blob.name, "generation": str(blob.generation),
            "size": str(blob.size), "contentType": blob.content_type, "metadata": blob.metadata or {}}
