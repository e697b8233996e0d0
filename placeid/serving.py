"""What the predict function serves with: the bundle named by the registry's serving pointer (fetched from the
bucket, cached on local disk, re-checked every few seconds) and place details from Firestore (cached with a
TTL). Both keep answering from what they have when Firestore or the bucket falter."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from google.api_core import exceptions as gexc
from google.cloud import firestore

from placeid.catalog import get_place, to_json
from placeid.config import Settings
from placeid.logs import get_logger, log
from placeid.registry import Registry, check_version
from placeid.store import is_transient
from placeid_edge.bundle import MAX_FILE_BYTES, Bundle, bundle_files
from placeid_edge.errors import InvalidBundle, ModelUnavailable, PlaceidError, TransientError

logger = get_logger("placeid.serving")
#: With no model yet, the pointer is re-read at most this often (seconds) while requests keep coming.
NO_MODEL_RECHECK_S = 1.0


class ModelCache:
    """The live bundle. ``bundle()`` returns it, re-reading the serving pointer at most every ``refresh_s``
    seconds (one thread does, the others keep answering with the current bundle). A new version is
    downloaded into a temporary folder, verified against its manifest, loaded, and only then renamed into
    the cache and swapped in, so a half-downloaded model is never served."""

    def __init__(self, settings: Settings, registry: Registry):
        self.settings = settings
        self.registry = registry
        self.bucket = registry.bucket
        self.cache_dir = Path(settings.model_cache_dir)
        self._bundle: Bundle | None = None
        self._next_check = 0.0
        # Why there is no model, as (error class, message for the client): a fresh exception is raised per
        # request (re-raising one stored exception would grow its traceback with every request).
        self._unavailable: tuple[type[PlaceidError], str] | None = None
        self._failed: tuple[str, float] | None = None  # (version, monotonic time before which it is not retried)
        self._lock = threading.Lock()

    @property
    def pool_size(self) -> int:
        return self.settings.inference_threads or os.cpu_count() or 1

    def bundle(self) -> Bundle:
        """The bundle to answer with. Raises :class:`ModelUnavailable` (503) while there is none."""
        if time.monotonic() >= self._next_check:
            # With a bundle in hand nobody waits for a refresh; without one, everybody waits for the first.
            if self._lock.acquire(blocking=self._bundle is None):
                try:
                    if time.monotonic() >= self._next_check:
                        self._refresh()
                finally:
                    self._lock.release()
        if self._bundle is None:
            kind, message = self._unavailable or (
                ModelUnavailable, "no model is being served yet: train one and promote it (placeid train --promote)")
            raise kind(message)
        return self._bundle

    def _refresh(self) -> None:
        """Re-read the pointer and load a new version; without a bundle, a failure is kept (and raised) until
        the next check, at most every NO_MODEL_RECHECK_S seconds. Details go to the log, never to clients."""
        self._unavailable = None
        version = None
        try:
            pointer = self.registry.serving()
            if pointer is None:
                self._next_check = time.monotonic() + min(NO_MODEL_RECHECK_S, self.settings.model_refresh_s)
                return
            version = pointer["version"]
            if self._bundle is None or self._bundle.version != version:
                if self._failed and self._failed[0] == version and time.monotonic() < self._failed[1]:
                    raise InvalidBundle(f"model {version} failed to load; retried after a pause")
                previous = self._bundle.version if self._bundle else None
                self._bundle = self._load(version)
                self._failed = None
                log(logger, logging.INFO, "serving model", model_version=version, previous_version=previous)
        except Exception as exc:  # noqa: BLE001 - keep serving the current model through any fault
            if isinstance(exc, PlaceidError) and not isinstance(exc, TransientError) and version and not (
                    self._failed and self._failed[0] == version):
                # a broken bundle is not fetched again on every request: once per refresh period
                self._failed = (version, time.monotonic() + self.settings.model_refresh_s)
            if self._bundle is None:
                self._next_check = time.monotonic() + NO_MODEL_RECHECK_S
                if isinstance(exc, TransientError) or (not isinstance(exc, PlaceidError) and is_transient(exc)):
                    self._unavailable = (TransientError, "cannot reach the model registry")
                elif isinstance(exc, PlaceidError):  # broken, unregistered or malformed: the pointer is at fault
                    self._unavailable = (ModelUnavailable, "the promoted model cannot be served")
                else:
                    raise
                log(logger, logging.ERROR, "no model to serve", model_version=version, error=repr(exc))
                return
            log(logger, logging.WARNING, "model refresh failed; still serving the current model",
                model_version=self._bundle.version, error=str(exc))
        self._next_check = time.monotonic() + self.settings.model_refresh_s

    def _load(self, version: str) -> Bundle:
        """The bundle of a registered version: from the cache folder, or downloaded, verified and moved there."""
        self.registry.get(check_version(version))  # a registered version, never a name made up in the pointer
        cache_dir = self.cache_dir.resolve()
        folder = (cache_dir / version).resolve()
        if folder.parent != cache_dir:
            raise InvalidBundle(f"model version {version!r} is not a folder of the model cache")
        if folder.is_dir():
            try:
                return Bundle.load(folder, pool_size=self.pool_size)
            except InvalidBundle:
                shutil.rmtree(folder, ignore_errors=True)  # altered on disk: fetch it again
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=cache_dir))
        try:
            self._download(version, "manifest.json", staging)
            try:
                manifest = json.loads((staging / "manifest.json").read_text())
            except ValueError:
                raise InvalidBundle(f"model {version}: manifest.json is not JSON") from None
            for name in bundle_files(manifest)[1:]:  # fixed names only: nothing from the manifest is a path
                self._download(version, name, staging)
            bundle = Bundle.load(staging, pool_size=self.pool_size)
            try:
                staging.rename(folder)
            except OSError:  # another instance sharing the cache renamed it first: theirs is as good
                shutil.rmtree(staging, ignore_errors=True)
            return bundle
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _download(self, version: str, name: str, folder: Path) -> None:
        """One file of the bundle, never more than MAX_FILE_BYTES of it (one request, no metadata read)."""
        path = folder / name
        try:
            self.bucket.blob(f"{self.registry.prefix}{version}/{name}").download_to_filename(
                str(path), start=0, end=MAX_FILE_BYTES)  # inclusive: one byte over the limit tells
        except gexc.NotFound:
            raise InvalidBundle(f"model {version} has no {name} in gs://{self.bucket.name}/") from None
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidBundle(f"model {version}: {name} is larger than {MAX_FILE_BYTES} bytes")


class PlaceDirectory:
    """Place details (name, coordinates, nearby sites) from Firestore, each reused for ``ttl_s`` seconds.
    On a Firestore fault it answers with what it had, or None (the caller falls back to the bundle)."""

    def __init__(self, db: firestore.Client, ttl_s: float):
        self.db = db
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, dict | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, place_id: str) -> dict | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(place_id)
        if cached and cached[0] > now:
            return cached[1]
        try:
            document = get_place(self.db, place_id)
        except Exception as exc:  # noqa: BLE001 - stale details beat no answer
            log(logger, logging.WARNING, "place lookup failed", place_id=place_id, error=str(exc))
            return cached[1] if cached else None
        details = to_json(document) if document else None
        with self._lock:
            self._cache[place_id] = (now + self.ttl_s, details)
        return details
