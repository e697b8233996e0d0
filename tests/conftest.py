"""Shared fixtures: real emulators (Firestore, Pub/Sub, fake-gcs-server) started once per session by the
project's own LocalStack, on free ports, reset between tests; real photos from the shared data folder."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest
import requests

from placeid.config import Settings
from placeid.local.stack import LocalStack

PROJECT = "placeid-test"
BUCKET = "placeid-test-bucket"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(state_dir: Path, **overrides) -> Settings:
    """Settings for an isolated stack: free ports, its own state folder."""
    values = dict(project=PROJECT, bucket=BUCKET, state_dir=state_dir, firestore_port=free_port(),
                  pubsub_port=free_port(), gcs_port=free_port(), ingest_port=free_port(), predict_port=free_port(),
                  firestore_timeout_s=5.0)
    values.update(overrides)
    return Settings.from_env(**values)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Settings.from_env().data_dir
    if not (path / "world30" / "images").is_dir():
        pytest.exit(f"shared data not found at {path}: set PLACEID_DATA", returncode=2)
    return path


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def emulators(stack_settings):
    """Firestore + Pub/Sub emulators and fake-gcs-server for the whole session; the process environment
    points the Google Cloud clients at them (exactly as the functions see it in the local stack)."""
    stack = LocalStack(stack_settings)
    try:
        stack.up(("firestore", "pubsub", "gcs"))
    except Exception:
        stack.down()
        raise
    os.environ.update(stack_settings.as_env())
    os.environ.update(stack_settings.emulator_env())
    yield stack
    stack.down()


def reset_firestore(settings: Settings) -> None:
    url = (f"{settings.url(settings.firestore_port)}/emulator/v1/projects/{settings.project}"
           "/databases/(default)/documents")
    requests.delete(url, timeout=10).raise_for_status()


@pytest.fixture
def settings(emulators, stack_settings) -> Settings:
    """A clean Firestore and an empty bucket for each test."""
    from placeid.store import storage_client

    reset_firestore(stack_settings)
    bucket = storage_client(stack_settings.project).bucket(stack_settings.bucket)
    for blob in bucket.list_blobs():
        blob.delete()
    return stack_settings


@pytest.fixture
def db(settings):
    from placeid.store import firestore_client

    return firestore_client(settings.project)


@pytest.fixture
def bucket(settings):
    from placeid.store import storage_client

    return storage_client(settings.project).bucket(settings.bucket)


@pytest.fixture
def catalog(db, data_dir):
    """The bundled Seoul catalog and world30's places, loaded into Firestore."""
    from placeid.catalog import bundled_catalog_path, load_catalog, read_catalog

    load_catalog(db, read_catalog(bundled_catalog_path()))
    load_catalog(db, read_catalog(data_dir / "world30" / "places.json"))
    return db


@pytest.fixture(scope="session")
def world30_photos(data_dir) -> dict[str, list[Path]]:
    """Real world30 photos by place id."""
    images = data_dir / "world30" / "images"
    return {p.name: sorted(p.glob("*.jpg")) for p in sorted(images.iterdir()) if p.is_dir()}


@pytest.fixture
def scratch_dir():
    with tempfile.TemporaryDirectory(prefix="placeid-test-") as path:
        yield Path(path)


@pytest.fixture
def browser():
    """Headless Chromium driven by Selenium (the page tests)."""
    from placeid.local.browser import BrowserMissing, headless_chromium

    try:
        driver = headless_chromium()
    except BrowserMissing as exc:
        pytest.fail(exc.message)
    yield driver
    driver.quit()


@pytest.fixture
def predict_server(settings, catalog, scratch_dir):
    """The predict function under functions-framework on a free port, re-reading the pointer every 0.5 s."""
    import dataclasses

    from placeid.local.stack import LocalStack
    from tests.serving import REFRESH_S

    server_settings = dataclasses.replace(settings, state_dir=scratch_dir / "state", model_refresh_s=REFRESH_S,
                                          model_cache_dir=scratch_dir / "model-cache")
    stack = LocalStack(server_settings)
    stack.start("predict")
    yield server_settings.url(server_settings.predict_port), server_settings
    stack.stop("predict")


SERVING_PLACES = ["petra", "louvre", "colosseum", "taj-mahal"]


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory, data_dir) -> Path:
    """A real model bundle, trained once per session from a few world30 photos of four places (96 px,
    head only) with its unknown-place rule calibrated on real negatives: what the serving tests serve."""
    from dataclasses import replace

    from placeid.catalog import catalog_snapshot, read_catalog
    from training.dataset import from_folder, load_negatives
    from training.train import TrainConfig, default_weights, run_training

    run_dir = tmp_path_factory.mktemp("bundle") / "run"
    examples = from_folder(data_dir / "world30" / "images", limit_per_place=16, places=SERVING_PLACES)
    negatives = load_negatives(data_dir / "negatives" / "images")[:60]
    places = catalog_snapshot(read_catalog(data_dir / "world30" / "places.json"))
    config = replace(TrainConfig().fast(), head_epochs=8, batch_size=16, representative_count=40,
                     show_progress=False, min_int8_agreement=0.6)
    run_training(config, examples, negatives, places, run_dir, default_weights(config, Settings.from_env().weights_dir))
    return run_dir


@pytest.fixture(scope="session")
def held_out_photos(small_bundle) -> list[tuple[Path, str]]:
    """(photo, place) pairs of the small bundle's test split: photos its model never saw."""
    import json

    split = json.loads((small_bundle / "split.json").read_text())
    return [(Path(e["source"]), e["label"]) for e in split["examples"] if e["split"] == "test"]


# -- test tiers --------------------------------------------------------------------------------------
# `make test-fast` runs `pytest -m "not slow"`: the tests that need no emulator, no Java, no gcloud and no trained
# model. A test is `slow` when its fixture closure (every fixture it uses, directly or through other fixtures,
# the test modules' own included: settings, db, bucket, catalog, held_out_photos, ...) reaches one of these:
SLOW_FIXTURES = {
    "emulators": "starts the Firestore and Pub/Sub emulators (Java, gcloud) and fake-gcs-server",
    "small_bundle": "trains a model (TensorFlow)",
    "browser": "starts headless Chromium",
}
# Tests that are slow for another reason (gcloud, terraform, checkov, a fresh venv, the emulated trainer image,
# headless Chromium) carry an explicit @pytest.mark.slow or a module-level `pytestmark = pytest.mark.slow`.


def slow_fixtures(item: pytest.Item) -> list[str]:
    """The fixtures of SLOW_FIXTURES that ``item`` uses, directly or through other fixtures."""
    return sorted(set(getattr(item, "fixturenames", ())) & SLOW_FIXTURES.keys())


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if slow_fixtures(item):
            item.add_marker(pytest.mark.slow)
