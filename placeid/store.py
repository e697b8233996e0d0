"""Google Cloud clients, Firestore collection names, and the line between transient and permanent faults.

The same code runs against the emulators and real Google Cloud: the client libraries pick the emulators
up from FIRESTORE_EMULATOR_HOST / STORAGE_EMULATOR_HOST / PUBSUB_EMULATOR_HOST; nothing here branches on it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import google.auth.exceptions
import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud import firestore, storage

from placeid.config import Settings

PLACES = "places"
SITES = "sites"
IMAGES = "images"
NEAR_BANDS = "near_bands"
NEAR_FEATURES = "near_features"
CONTENT_CLAIMS = "content_claims"
FILENAME_CLAIMS = "filename_claims"
MODELS = "models"


@dataclass(frozen=True)
class CompositeIndex:
    """A Firestore composite index a query of the code needs: ``fields`` are (path, ASCENDING|DESCENDING)."""

    collection: str
    fields: tuple[tuple[str, str], ...]
    used_by: str


#: Every composite index the code's queries need: the one place they are written down. Terraform's
#: infra/firestore_indexes.tf.json is generated from it (`placeid infra indexes`; a test keeps them equal).
COMPOSITE_INDEXES = (
    CompositeIndex(SITES, (("kind", "ASCENDING"), ("geohash", "ASCENDING")), "catalog.sites_within(kind=...)"),
    CompositeIndex(IMAGES, (("status", "ASCENDING"), ("created_at", "ASCENDING")), "review.Reviewer.list"),
)
@dataclass(frozen=True)
class VectorIndex:
    """A Firestore vector index (flat) for nearest-neighbour queries on ``vector_field`` after equality filters on
    ``prefix_fields``; its dimension is the Terraform variable ``dimension_variable`` (it depends on the model)."""

    collection: str
    prefix_fields: tuple[str, ...]
    vector_field: str
    dimension_variable: str
    used_by: str


VECTOR_INDEXES = (
    VectorIndex(NEAR_FEATURES, ("model_version",), "features", "near_features_dimension",
                "neardup.FeatureIndex.find"),
)
#: Fields whose automatic single-field indexes are turned off: maps keyed by image id, never queried, that
#: would otherwise cost an index entry per key and hit the per-document index-entry limit.
INDEX_EXEMPTIONS = ((NEAR_BANDS, "members"),)

_TRANSIENT_TYPES = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.GatewayTimeout,
    gexc.TooManyRequests,
    gexc.Aborted,
    gexc.RetryError,
    google.auth.exceptions.TransportError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


#: How the Firestore client words a transaction that kept conflicting with others until it ran out of attempts (a
#: ValueError): contention, which a later delivery gets past (tests/test_hardening.py checks the client's wording).
CONTENDED_TRANSACTION = "Failed to commit transaction in "


def is_transient(exc: BaseException) -> bool:
    """True for infrastructure faults that a retry may cure (the platform should redeliver), contended
    transactions included."""
    if isinstance(exc, ValueError) and str(exc).startswith(CONTENDED_TRANSACTION):
        return True
    return isinstance(exc, _TRANSIENT_TYPES)


@functools.lru_cache(maxsize=8)
def firestore_client(project: str) -> firestore.Client:
    """A Firestore client for ``project`` (emulator when FIRESTORE_EMULATOR_HOST is set)."""
    return firestore.Client(project=project)


@functools.lru_cache(maxsize=8)
def storage_client(project: str) -> storage.Client:
    """A Cloud Storage client for ``project`` (emulator when STORAGE_EMULATOR_HOST is set)."""
    return storage.Client(project=project)


def firestore_call_options(settings: Settings) -> dict:
    """``retry``/``timeout`` keyword arguments bounding every Firestore call by the configured deadline."""
    retry = gretry.Retry(
        predicate=gretry.if_exception_type(
            gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError
        ),
        initial=0.2,
        maximum=2.0,
        timeout=settings.firestore_timeout_s,
    )
    return {"retry": retry, "timeout": settings.firestore_timeout_s}


def ensure_bucket(settings: Settings, name: str | None = None) -> storage.Bucket:
    """A bucket (default: the raw one), created if missing (for the local stack; Terraform owns them in the
    cloud)."""
    client = storage_client(settings.project)
    name = name or settings.bucket
    bucket = client.bucket(name)
    if not bucket.exists():
        try:
            bucket = client.create_bucket(name)
        except gexc.Conflict:
            pass
    return bucket
