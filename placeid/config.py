"""All configuration, read from environment variables with defaults, in one place."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

_SOURCE_DIR = Path(__file__).resolve().parent.parent


def _is_checkout(path: Path) -> bool:
    return (path / "functions").is_dir() and (path / "pyproject.toml").is_file()


#: The repository that commands reading or writing its files work on (`placeid package`, `placeid infra`, the
#: local stack): the checkout this code runs from (editable install, PYTHONPATH), else, when placeid is
#: installed as a package (site-packages), the current directory: run such commands from the repository root.
REPO_ROOT = _SOURCE_DIR if _is_checkout(_SOURCE_DIR) else Path.cwd()


#: Bits of the pHash the near-duplicate index stores (placeid.neardup), and the largest Hamming distance a
#: near-duplicate threshold can have.
PHASH_BITS = 64
NEAR_DUP_MAX_DISTANCE = PHASH_BITS - 1

#: Settings field -> environment variable. Every setting can be set this way, and nowhere else.
ENV_VARS = {
    "project": "GOOGLE_CLOUD_PROJECT",
    "bucket": "PLACEID_BUCKET",
    "curated_bucket": "PLACEID_CURATED_BUCKET",
    "models_bucket": "PLACEID_MODELS_BUCKET",
    "data_dir": "PLACEID_DATA",
    "raw_prefix": "PLACEID_RAW_PREFIX",
    "curated_prefix": "PLACEID_CURATED_PREFIX",
    "host": "PLACEID_HOST",
    "max_object_bytes": "PLACEID_MAX_OBJECT_BYTES",
    "max_pixels": "PLACEID_MAX_PIXELS",
    "min_side": "PLACEID_MIN_SIDE",
    "max_aspect_ratio": "PLACEID_MAX_ASPECT",
    "curated_max_side": "PLACEID_CURATED_MAX_SIDE",
    "curated_jpeg_quality": "PLACEID_CURATED_QUALITY",
    "near_dup_distance": "PLACEID_NEAR_DUP_DISTANCE",
    "near_dup_cosine": "PLACEID_NEAR_DUP_COSINE",
    "near_dup_loose_distance": "PLACEID_NEAR_DUP_LOOSE_DISTANCE",
    "firestore_timeout_s": "PLACEID_FIRESTORE_TIMEOUT_S",
    "state_dir": "PLACEID_STATE_DIR",
    "firestore_port": "PLACEID_FIRESTORE_PORT",
    "pubsub_port": "PLACEID_PUBSUB_PORT",
    "gcs_port": "PLACEID_GCS_PORT",
    "ingest_port": "PLACEID_INGEST_PORT",
    "notification_topic": "PLACEID_TOPIC",
    "bridge_subscription": "PLACEID_SUBSCRIPTION",
    "bridge_concurrency": "PLACEID_BRIDGE_CONCURRENCY",
    "predict_port": "PLACEID_PREDICT_PORT",
    "review_port": "PLACEID_REVIEW_PORT",
    "model_cache_dir": "PLACEID_MODEL_CACHE",
    "model_refresh_s": "PLACEID_MODEL_REFRESH_S",
    "places_ttl_s": "PLACEID_PLACES_TTL_S",
    "max_request_bytes": "PLACEID_MAX_REQUEST_BYTES",
    "max_batch": "PLACEID_MAX_BATCH",
    "top_k": "PLACEID_TOP_K",
    "inference_threads": "PLACEID_INFERENCE_THREADS",
    "cors_origins": "PLACEID_CORS_ORIGINS",
    "weights": "PLACEID_WEIGHTS",
    "collect_allow_private": "PLACEID_COLLECT_ALLOW_PRIVATE",
    "vet_uploads": "PLACEID_VET_UPLOADS",
    "max_event_age_s": "PLACEID_MAX_EVENT_AGE_S",
    "decode_budget_mb": "PLACEID_DECODE_BUDGET_MB",
    "body_budget_mb": "PLACEID_BODY_BUDGET_MB",
    "decode_wait_s": "PLACEID_DECODE_WAIT_S",
    "ingest_decode_wait_s": "PLACEID_INGEST_DECODE_WAIT_S",
    "target": "PLACEID_TARGET",
    "gcloud_sdk": "PLACEID_GCLOUD_SDK",
}


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(raw)
    return value in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Build with :meth:`from_env`; every field maps to one variable."""

    project: str = "placeid-local"
    bucket: str = "placeid-local"  # where photos land (raw/); the only bucket locally
    curated_bucket: str = ""  # normalised copies (curated/); "" = the same bucket
    models_bucket: str = ""  # model bundles (models/); "" = the same bucket
    data_dir: Path = REPO_ROOT.parent / "shared" / "data"
    raw_prefix: str = "raw/"
    curated_prefix: str = "curated/"
    max_object_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # decompression-bomb guard
    min_side: int = 32
    max_aspect_ratio: float = 10.0
    curated_max_side: int = 1024
    curated_jpeg_quality: int = 90
    near_dup_distance: int = 8  # pHash Hamming distance (ingest's index, training's split groups)
    # The second vote (a crop or a tilt of an accepted photo): the served model's features at cosine >= this and a
    # pHash within the looser distance (bench/neardup_bench.py measured the pair; README, Ingestion).
    near_dup_cosine: float = 0.85
    near_dup_loose_distance: int = 22
    firestore_timeout_s: float = 30.0
    state_dir: Path = REPO_ROOT / ".placeid"  # local stack pids and logs
    host: str = "127.0.0.1"
    firestore_port: int = 8681
    pubsub_port: int = 8682
    gcs_port: int = 8683
    ingest_port: int = 8684
    notification_topic: str = "placeid-object-finalize"
    bridge_subscription: str = "placeid-ingest-bridge"
    bridge_concurrency: int = 8
    predict_port: int = 8685
    review_port: int = 8686  # placeid review serve (the review page, on this machine only)
    model_cache_dir: Path = Path(tempfile.gettempdir()) / "placeid-models"  # the only local disk serving uses
    model_refresh_s: float = 30.0  # how often serving re-reads the serving pointer
    places_ttl_s: float = 300.0  # how long place details read from Firestore are reused
    max_request_bytes: int = 10 * 1024 * 1024
    max_batch: int = 16  # images per TF-Serving-style request
    top_k: int = 3
    inference_threads: int = 0  # interpreters that may run at once; 0 = one per CPU
    cors_origins: str = ""  # comma-separated origins allowed to call predict from a browser, or *
    weights: Path | None = None  # ImageNet backbones; None = weights/ beside the data folder
    collect_allow_private: bool = False  # let the URL collector fetch from loopback/private addresses (local tests)
    vet_uploads: bool = True  # ingest asks the serving model about each photo (placeid.vetting)
    max_event_age_s: float = 3600.0  # ingest retries transient faults for events younger than this, then records
    # Memory (MiB) that image decodes in flight may hold at once, per process (predict and ingest; estimated from
    # each header before decoding): a decode that does not fit waits up to decode_wait_s (predict; then 503) or
    # ingest_decode_wait_s (ingest; then the event is retried), one larger than the whole budget is refused (413 /
    # rejected). 0 = auto: predict 128 MiB (placeid_edge.preprocess.DEFAULT_BUDGET_BYTES), ingest 104 MiB
    # (placeid.ingest.DEFAULT_BUDGET_BYTES). infra/README.md, Sizing.
    decode_budget_mb: float = 0.0
    # Memory (MiB) that encoded bytes in flight may hold, per process, reserved before they are read: request
    # bodies in predict (twice the declared length: a multipart file is spooled, then read; a JSON body is parsed),
    # downloaded photos in ingest. Same waits as decodes. 0 = auto: predict 2 x max_request_bytes, ingest
    # 1 x max_object_bytes.
    body_budget_mb: float = 0.0
    decode_wait_s: float = 10.0
    ingest_decode_wait_s: float = 60.0
    target: str = "local"  # what the command line works on: "local" (the emulators) or "cloud" (Google Cloud)
    gcloud_sdk: Path | None = None  # the Google Cloud SDK (the emulators); None = found from gcloud on PATH

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Settings from the environment (see :data:`ENV_VARS`); keyword overrides win."""
        values = {}
        for item in fields(cls):
            raw = os.environ.get(ENV_VARS[item.name], "")
            if item.name in overrides:
                values[item.name] = overrides[item.name]
            elif raw != "":
                kind = Path if item.default is None else type(item.default)
                try:
                    values[item.name] = _parse_bool(raw) if kind is bool else kind(raw)
                except ValueError as exc:
                    raise ValueError(f"{ENV_VARS[item.name]} must be a {kind.__name__}, got {raw!r}") from exc
        settings = cls(**values)
        settings.validate()
        return settings

    def as_env(self) -> dict[str, str]:
        """Every setting as environment variables, for child processes."""
        return {ENV_VARS[item.name]: str(getattr(self, item.name)) for item in fields(self)
                if getattr(self, item.name) is not None}

    def validate(self) -> None:
        """Reject settings that cannot work, with a message naming the variable."""
        if not 0 <= self.near_dup_distance <= NEAR_DUP_MAX_DISTANCE:
            raise ValueError(f"PLACEID_NEAR_DUP_DISTANCE must be within 0..{NEAR_DUP_MAX_DISTANCE} (bits of a pHash)")
        if not self.near_dup_distance <= self.near_dup_loose_distance <= NEAR_DUP_MAX_DISTANCE:
            raise ValueError("PLACEID_NEAR_DUP_LOOSE_DISTANCE must be within PLACEID_NEAR_DUP_DISTANCE.."
                             f"{NEAR_DUP_MAX_DISTANCE}")
        if not 0 < self.near_dup_cosine <= 1:
            raise ValueError("PLACEID_NEAR_DUP_COSINE must be within 0..1 (a cosine similarity)")
        if self.max_object_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("PLACEID_MAX_OBJECT_BYTES and PLACEID_MAX_PIXELS must be positive")
        if min(self.decode_budget_mb, self.body_budget_mb, self.decode_wait_s, self.ingest_decode_wait_s) < 0:
            raise ValueError("PLACEID_DECODE_BUDGET_MB, PLACEID_BODY_BUDGET_MB, PLACEID_DECODE_WAIT_S and "
                             "PLACEID_INGEST_DECODE_WAIT_S must be >= 0")
        if self.max_event_age_s <= 0:
            raise ValueError("PLACEID_MAX_EVENT_AGE_S must be positive")
        if self.target not in ("local", "cloud"):
            raise ValueError("PLACEID_TARGET must be local or cloud")
        if self.curated_max_side < 64:
            raise ValueError("PLACEID_CURATED_MAX_SIDE must be at least 64")
        if not 1 <= self.curated_jpeg_quality <= 100:
            raise ValueError("PLACEID_CURATED_QUALITY must be within 1..100")
        if self.max_request_bytes <= 0 or self.max_batch <= 0 or self.top_k <= 0 or self.inference_threads < 0:
            raise ValueError("PLACEID_MAX_REQUEST_BYTES, PLACEID_MAX_BATCH and PLACEID_TOP_K must be positive, "
                             "PLACEID_INFERENCE_THREADS >= 0")

    @property
    def world30_dir(self) -> Path:
        return self.data_dir / "world30"

    @property
    def weights_dir(self) -> Path:
        """ImageNet backbones: ``PLACEID_WEIGHTS``, or ``weights/`` beside the data folder."""
        return self.weights or self.data_dir.parent / "weights"

    @property
    def curated_bucket_name(self) -> str:
        return self.curated_bucket or self.bucket

    @property
    def models_bucket_name(self) -> str:
        return self.models_bucket or self.bucket

    @property
    def allowed_origins(self) -> set[str]:
        """``PLACEID_CORS_ORIGINS`` as a set (``{"*"}`` allows every origin)."""
        return {origin.strip() for origin in self.cors_origins.split(",") if origin.strip()}

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    def emulator_env(self) -> dict[str, str]:
        """Variables that point the Google Cloud client libraries at the local emulators."""
        return {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "FIRESTORE_EMULATOR_HOST": f"{self.host}:{self.firestore_port}",
            "PUBSUB_EMULATOR_HOST": f"{self.host}:{self.pubsub_port}",
            "STORAGE_EMULATOR_HOST": self.url(self.gcs_port),
        }
