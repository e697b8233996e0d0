"""Model registry: bundles in ``gs://BUCKET/models/<version>/``, records in ``models/{version}``, and the
serving pointer ``gs://BUCKET/config/serving.json`` moved by promote and rollback.

The pointer lives in the models bucket, not in Firestore: in the cloud only what may write models (the
training job, an operator) may write there, while every workload that writes Firestore (the ingest function,
which parses untrusted photos) could otherwise choose what predict serves."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from google.api_core import exceptions as gexc
from google.cloud import firestore

from placeid.config import Settings
from placeid.store import MODELS, firestore_client, storage_client
from placeid_edge.bundle import bundle_files
from placeid_edge.errors import BadRequest, InvalidBundle, NotFound, TransientError

#: Bundles live under gs://BUCKET/models/<version>/.
MODELS_PREFIX = "models/"
#: The serving pointer, an object of the models bucket: ``{"version", "history", "updated_at", "action"}``.
SERVING_OBJECT = "config/serving.json"
#: What a model version looks like (training makes ``<UTC time>-<model>-<data fingerprint>``). A version is
#: used as a folder and object name, so anything else (a path, "..", "/abs") is refused.
VERSION_PATTERN = re.compile(r"[0-9]{8}T[0-9]{6}Z(-[a-z0-9_]{1,40}){1,4}")
_POINTER_ATTEMPTS = 5


def check_version(version: object) -> str:
    """``version`` when it matches :data:`VERSION_PATTERN`; :class:`InvalidBundle` otherwise."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise InvalidBundle(f"not a model version: {str(version)[:80]!r}")
    return version


def verify_run(run_dir: Path) -> dict:
    """Check every file against the manifest's sha256; returns the manifest."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        path = run_dir / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise BadRequest(f"{run_dir}: {name} does not match the manifest")
    return manifest


def write_bundle_zip(run_dir: Path, path: Path) -> Path:
    """The bundle as one .zip (model, labels, places snapshot, manifest): what the edge package loads."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in bundle_files(manifest):
            archive.write(run_dir / name, name)
    return path


class Registry:
    """Models in a bucket and Firestore."""

    def __init__(self, db: firestore.Client, bucket, prefix: str = MODELS_PREFIX):
        self.db = db
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_settings(cls, settings: Settings) -> "Registry":
        """The registry of the configured project: its Firestore and its models bucket."""
        return cls(firestore_client(settings.project),
                   storage_client(settings.project).bucket(settings.models_bucket_name))

    def register(self, run_dir: Path) -> dict:
        """Upload a verified run folder and record it; returns the Firestore record."""
        manifest = verify_run(run_dir)
        parity = manifest.get("parity") or {}
        if parity.get("passed") is False:
            raise BadRequest(f"{run_dir}: the int8 model failed the parity gate (agreement with Keras "
                             f"{parity.get('agreement', 0):.2%}, 95 % lower bound {parity.get('agreement_lower_95', 0):.2%}, "
                             f"required {parity.get('required', 0):.0%}): not registered")
        version = check_version(manifest["version"])
        base = f"{self.prefix}{version}/"
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
            self.bucket.blob(base + path.relative_to(run_dir).as_posix()).upload_from_filename(str(path))
        record = {"version": version, "uri": f"gs://{self.bucket.name}/{base}", "manifest": manifest,
                  "metrics": manifest["metrics"], "registered_at": firestore.SERVER_TIMESTAMP}
        self.db.collection(MODELS).document(version).set(record)
        return self.get(version)

    def get(self, version: str) -> dict:
        snap = self.db.collection(MODELS).document(check_version(version)).get()
        if not snap.exists:
            raise NotFound(f"no model {version!r} in the registry")
        return snap.to_dict()

    def list(self) -> list[dict]:
        return sorted((s.to_dict() for s in self.db.collection(MODELS).stream()), key=lambda r: r["version"])

    def _read_pointer(self) -> tuple[dict | None, int]:
        """The pointer and its object generation (0 when there is none)."""
        blob = self.bucket.get_blob(SERVING_OBJECT)
        if blob is None:
            return None, 0
        try:
            pointer = json.loads(blob.download_as_bytes(if_generation_match=blob.generation))
        except gexc.PreconditionFailed:  # moved between the two reads
            return self._read_pointer()
        except gexc.NotFound:
            return None, 0
        except ValueError:
            raise InvalidBundle(f"gs://{self.bucket.name}/{SERVING_OBJECT} is not JSON") from None
        if not isinstance(pointer, dict) or not isinstance(pointer.get("history", []), list):
            raise InvalidBundle(f"gs://{self.bucket.name}/{SERVING_OBJECT} is not a serving pointer")
        check_version(pointer.get("version"))
        return pointer, blob.generation

    def serving(self) -> dict | None:
        """The serving pointer: ``{"version", "history": [...], "updated_at", "action"}``, or None. Raises
        :class:`InvalidBundle` when it is malformed or names something that is not a version."""
        return self._read_pointer()[0]

    @staticmethod
    def _better_or_equal(candidate: dict, live: dict) -> bool:
        keys = ("top1", "macro_f1")
        return tuple(candidate["metrics"][k] for k in keys) >= tuple(live["metrics"][k] for k in keys)

    def _move(self, decide) -> dict:
        """Replace the pointer with ``decide(current)`` unless another writer moved it meanwhile (then decide
        again on what it wrote): a compare-and-swap on the object's generation."""
        for _ in range(_POINTER_ATTEMPTS):
            current, generation = self._read_pointer()
            pointer = decide(current)
            if pointer is current:
                return current
            pointer["updated_at"] = datetime.now(timezone.utc).isoformat()
            try:
                self.bucket.blob(SERVING_OBJECT).upload_from_string(
                    json.dumps(pointer), content_type="application/json", if_generation_match=generation)
                return pointer
            except gexc.PreconditionFailed:
                continue
        raise TransientError("the serving pointer kept moving under this change; try again")

    def promote(self, version: str, force: bool = False) -> dict:
        """Point serving at ``version``; refused when its metrics are worse than the live model's."""
        candidate = self.get(version)

        def decide(current: dict | None) -> dict:
            if current and current["version"] == version:
                return current
            if current and not force:
                live = self.get(current["version"])
                if not self._better_or_equal(candidate, live):
                    raise BadRequest(
                        f"{version} (top1 {candidate['metrics']['top1']:.3f}, macro F1 "
                        f"{candidate['metrics']['macro_f1']:.3f}) is worse than the live {live['version']} "
                        f"(top1 {live['metrics']['top1']:.3f}, macro F1 {live['metrics']['macro_f1']:.3f}); "
                        "use --force to promote it anyway")
            history = (current or {}).get("history", []) + ([current["version"]] if current else [])
            return {"version": version, "history": history, "action": "promote" + (" (forced)" if force else "")}

        return self._move(decide)

    def rollback(self) -> dict:
        """Point serving back at the previously served version."""

        def decide(current: dict | None) -> dict:
            if not current or not current.get("history"):
                raise BadRequest("nothing to roll back to")
            history = list(current["history"])
            previous = history.pop()
            return {"version": previous, "history": history, "action": f"rollback from {current['version']}"}

        return self._move(decide)
