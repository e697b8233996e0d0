"""The deploy artifact works: each packaged function folder (`placeid package`) starts under
functions-framework from a fresh venv built only from its own requirements.txt, and answers a real request
against the emulators, with the raw, curated and models buckets apart as in the cloud."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from placeid.local.deploy import FUNCTIONS, package_function
from placeid.registry import Registry
from placeid.local.stack import _http_ok
from tests.conftest import free_port
from tests.events import FINALIZED, upload
from tests.serving import publish


@pytest.fixture(scope="module")
def deployables(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (packaged folder, a fresh venv with only its requirements.txt installed)."""
    out = tmp_path_factory.mktemp("deploy")
    built = {}
    for name in FUNCTIONS:
        folder = package_function(name, out / "dist")
        venv = out / f"venv-{name}"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        result = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                                 "-r", str(folder / "requirements.txt")], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        built[name] = folder, venv
    return built


@pytest.fixture
def start_function(settings, deployables, scratch_dir):
    """Start a packaged function from its own venv (no repository on its path) with extra environment."""
    processes = []

    def start(name: str, **env) -> str:
        folder, venv = deployables[name]
        port = free_port()
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        clean.update(settings.as_env())
        clean.update(settings.emulator_env())
        clean.update({k: str(v) for k, v in env.items()})
        log = open(scratch_dir / f"{name}.log", "wb")
        process = subprocess.Popen([str(venv / "bin" / "functions-framework"), "--target", name, "--source",
                                    str(folder / "main.py"), "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=str(folder), env=clean, stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not _http_ok(url + "/"):
            assert process.poll() is None, (scratch_dir / f"{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the packaged function did not start"
            time.sleep(0.2)
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


def new_bucket(bucket, prefix: str):
    client = bucket.client
    return client.create_bucket(f"{prefix}-{uuid.uuid4().hex[:8]}")


def test_packaged_ingest_answers_a_storage_event(start_function, catalog, db, bucket, world30_photos):
    from cloudevents.conversion import to_binary

    from tests.events import storage_event

    curated = new_bucket(bucket, "curated")
    url = start_function("ingest", PLACEID_CURATED_BUCKET=curated.name)
    photo = world30_photos["petra"][0]
    resource = upload(bucket, f"raw/petra/{photo.name}", photo.read_bytes())
    headers, body = to_binary(storage_event(resource, FINALIZED))
    response = requests.post(url + "/", data=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    [record] = [snap.to_dict() for snap in db.collection("images").stream()]
    assert record["status"] == "accepted" and record["place_id"] == "petra"
    assert record["curated"]["bucket"] == curated.name
    assert curated.blob(record["curated"]["path"]).exists()
    assert not bucket.blob(record["curated"]["path"]).exists()


def test_packaged_predict_answers_a_photo(start_function, catalog, db, bucket, small_bundle, scratch_dir,
                                          held_out_photos):
    models = new_bucket(bucket, "models")
    version = publish(db, models, small_bundle, scratch_dir)
    url = start_function("predict", PLACEID_MODELS_BUCKET=models.name, PLACEID_MODEL_CACHE=scratch_dir / "cache")
    photo, _ = held_out_photos[0]
    response = requests.post(url + "/", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == version
    assert Registry(db, models).serving()["version"] == version
    assert requests.get(url + "/", timeout=10).headers["Content-Type"].startswith("text/html")
