"""Model registry: bundles in ``gs://BUCKET/models/<version>/``, records in ``models/{version}``, and the
serving pointer ``config/serving`` moved by promote and rollback."""

from __future__ import annotations

import hashlib
import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from google.cloud import firestore

from placeid.config import Settings
from placeid.store import CONFIG, MODELS, firestore_client, storage_client
from placeid_edge.bundle import bundle_files
from placeid_edge.errors import BadRequest, NotFound

#: Bundles live under gs://BUCKET/models/<version>/.
MODELS_PREFIX = "models/"
SERVING = (CONFIG, "serving")


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
        version = manifest["version"]
        base = f"{self.prefix}{version}/"
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
            self.bucket.blob(base + path.relative_to(run_dir).as_posix()).upload_from_filename(str(path))
        record = {"version": version, "uri": f"gs://{self.bucket.name}/{base}", "manifest": manifest,
                  "metrics": manifest["metrics"], "registered_at": firestore.SERVER_TIMESTAMP}
        self.db.collection(MODELS).document(version).set(record)
        return self.get(version)

    def get(self, version: str) -> dict:
        snap = self.db.collection(MODELS).document(version).get()
        if not snap.exists:
            raise NotFound(f"no model {version!r} in the registry")
        return snap.to_dict()

    def list(self) -> list[dict]:
        return sorted((s.to_dict() for s in self.db.collection(MODELS).stream()), key=lambda r: r["version"])

    def serving(self) -> dict | None:
        """The serving pointer: ``{"version", "history": [...], "updated_at"}``, or None."""
        snap = self.db.collection(SERVING[0]).document(SERVING[1]).get()
        return snap.to_dict() if snap.exists else None

    @staticmethod
    def _better_or_equal(candidate: dict, live: dict) -> bool:
        keys = ("top1", "macro_f1")
        return tuple(candidate["metrics"][k] for k in keys) >= tuple(live["metrics"][k] for k in keys)

    def promote(self, version: str, force: bool = False) -> dict:
        """Point serving at ``version``; refused when its metrics are worse than the live model's."""
        candidate = self.get(version)
        ref = self.db.collection(SERVING[0]).document(SERVING[1])

        @firestore.transactional
        def move(txn):
            snap = ref.get(transaction=txn)
            current = snap.to_dict() if snap.exists else None
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
            pointer = {"version": version, "history": history, "updated_at": datetime.now(timezone.utc),
                       "action": "promote" + (" (forced)" if force else "")}
            txn.set(ref, pointer)
            return pointer

        return move(self.db.transaction())

    def rollback(self) -> dict:
        """Point serving back at the previously served version."""
        ref = self.db.collection(SERVING[0]).document(SERVING[1])

        @firestore.transactional
        def move(txn):
            snap = ref.get(transaction=txn)
            current = snap.to_dict() if snap.exists else None
            if not current or not current.get("history"):
                raise BadRequest("nothing to roll back to")
            history = list(current["history"])
            previous = history.pop()
            pointer = {"version": previous, "history": history, "updated_at": datetime.now(timezone.utc),
                       "action": f"rollback from {current['version']}"}
            txn.set(ref, pointer)
            return pointer

        return move(self.db.transaction())
