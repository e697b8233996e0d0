"""Local stand-in for Eventarc: pulls Cloud Storage notifications from Pub/Sub and POSTs each one to a
function as the binary-mode CloudEvent a 2nd-gen function receives. A message is acknowledged only after
the function answers 2xx; otherwise it is nacked (after a pause) and Pub/Sub redelivers it."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from google.cloud import pubsub_v1

from placeid.config import Settings
from placeid.logs import get_logger, log

logger = get_logger("bridge")

#: Cloud Storage notification eventType -> CloudEvent type delivered by Eventarc.
EVENT_TYPES = {
    "OBJECT_FINALIZE": "google.cloud.storage.object.v1.finalized",
    "OBJECT_DELETE": "google.cloud.storage.object.v1.deleted",
    "OBJECT_ARCHIVE": "google.cloud.storage.object.v1.archived",
    "OBJECT_METADATA_UPDATE": "google.cloud.storage.object.v1.metadataUpdated",
}


def storage_cloud_event(message_id: str, attributes: dict, payload: bytes) -> CloudEvent | None:
    """The CloudEvent Eventarc would deliver for one storage notification, or None if it is not one."""
    event_type = EVENT_TYPES.get(attributes.get("eventType", ""))
    if event_type is None or "bucketId" not in attributes or "objectId" not in attributes:
        return None
    data = json.loads(payload.decode("utf-8")) if payload else {}
    return CloudEvent(
        {
            "id": message_id,
            "specversion": "1.0",
            "source": f"//storage.googleapis.com/projects/_/buckets/{attributes['bucketId']}",
            "type": event_type,
            "subject": f"objects/{attributes['objectId']}",
            "time": attributes.get("eventTime") or data.get("updated"),
            "datacontenttype": "application/json",
        },
        data,
    )


class Bridge:
    """Pulls ``subscription`` and delivers to ``target_url`` with at most ``concurrency`` requests in flight."""

    def __init__(self, settings: Settings, target_url: str, request_timeout_s: float = 540.0,
                 retry_pause_s: float = 1.0):
        self.settings = settings
        self.target_url = target_url
        self.request_timeout_s = request_timeout_s
        self.retry_pause_s = retry_pause_s
        self.subscriber = pubsub_v1.SubscriberClient()
        self.subscription = self.subscriber.subscription_path(settings.project, settings.bridge_subscription)
        self.session = requests.Session()
        self.delivered = 0
        self.failed = 0

    def deliver(self, message) -> None:
        """Handle one Pub/Sub message: POST it as a CloudEvent; ack on 2xx, nack otherwise."""
        event = storage_cloud_event(message.message_id, dict(message.attributes), message.data)
        if event is None:
            log(logger, logging.WARNING, "dropping a message that is no storage notification",
                message_id=message.message_id)
            message.ack()
            return
        headers, body = to_binary(event)
        try:
            response = self.session.post(self.target_url, data=body, headers=headers,
                                         timeout=self.request_timeout_s)
            ok = 200 <= response.status_code < 300
            status = response.status_code
        except requests.RequestException as exc:
            ok, status = False, repr(exc)
        if ok:
            self.delivered += 1
            message.ack()
            return
        self.failed += 1
        log(logger, logging.WARNING, "delivery failed, will be redelivered", message_id=message.message_id,
            subject=event["subject"], status=status)
        time.sleep(self.retry_pause_s)
        message.nack()

    def run(self, stop: threading.Event) -> None:
        """Pull and deliver until ``stop`` is set."""
        concurrency = self.settings.bridge_concurrency
        scheduler = pubsub_v1.subscriber.scheduler.ThreadScheduler(ThreadPoolExecutor(concurrency))
        future = self.subscriber.subscribe(
            self.subscription, self.deliver,
            flow_control=pubsub_v1.types.FlowControl(max_messages=concurrency),
            scheduler=scheduler,
        )
        log(logger, logging.INFO, "bridge ready", subscription=self.subscription, target=self.target_url)
        try:
            while not stop.is_set() and not future.done():
                stop.wait(0.5)
        finally:
            future.cancel()
            try:
                future.result(timeout=10)
            except Exception:  # noqa: BLE001 - cancellation surfaces as an exception
                pass
            self.subscriber.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pub/Sub -> CloudEvent bridge (local Eventarc)")
    parser.add_argument("--target", required=True, help="function URL to POST CloudEvents to")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Bridge(Settings.from_env(), args.target).run(stop)


if __name__ == "__main__":
    main()
