"""Cloud Function (2nd gen, Eventarc: google.cloud.storage.object.v1.finalized) for bucket-drop ingestion.

A thin adapter: parse the CloudEvent, call the core library. Bad input is recorded and the function
returns (no retry); transient faults raise, so the platform redelivers the event, until the event (its
``time``) is older than the ingestor's ``max_event_age_s``: then the photo is recorded as ``error``."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from placeid.ingest import Ingestor

_ingestor: Ingestor | None = None


def _get_ingestor() -> Ingestor:
    global _ingestor
    if _ingestor is None:
        _ingestor = Ingestor()
    return _ingestor


@functions_framework.cloud_event
def ingest(cloud_event: CloudEvent) -> None:
    """Ingest one finalized object."""
    _get_ingestor().handle_event(cloud_event["type"], cloud_event.get_data() or {}, cloud_event.get("time"))
