"""The edge package on its own: bundles from folders and .zip files, verification, the CLI on real photos,
EXIF GPS, thread safety, no TensorFlow, and the same answers under tflite-runtime 2.14 in its numpy<2 venv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from placeid.config import REPO_ROOT
from placeid.registry import write_bundle_zip
from placeid_edge.bundle import Bundle
from placeid_edge.errors import InvalidBundle, InvalidImage, UnsupportedMediaType
from placeid_edge.preprocess import prepare_image
from placeid_edge.runtime import load_interpreter_class, run_with_mirror

TFLITE_VENV = Path(os.environ.get("PLACEID_TFLITE_VENV", REPO_ROOT / ".venv-tflite"))


@pytest.fixture(scope="module")
def bundle_zip(small_bundle, tmp_path_factory) -> Path:
    return write_bundle_zip(small_bundle, tmp_path_factory.mktemp("zip") / "bundle.zip")


@pytest.fixture(scope="module")
def bundle(bundle_zip) -> Bundle:
    return Bundle.load(bundle_zip, pool_size=2)


def edge_cli(*args: str, python: Path | str = sys.executable, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "placeid_edge.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_folder_and_zip_bundles_answer_alike(small_bundle, bundle, held_out_photos):
    folder = Bundle.load(small_bundle)
    manifest = json.loads((small_bundle / "manifest.json").read_text())
    assert bundle.version == folder.version == manifest["version"]
    assert bundle.labels == json.loads((small_bundle / "labels.json").read_text())
    for photo, _ in held_out_photos[:4]:
        a, b = bundle.predict(photo), folder.predict(photo.read_bytes())
        assert a.probabilities == b.probabilities and a.top_k == b.top_k
        assert a.model_version == manifest["version"] and a.timing_ms["total"] > 0


def test_answers_on_held_out_photos(bundle, held_out_photos):
    """Right place, its coordinates and nearby sites from the snapshot; the full vector in label order."""
    predictions = bundle.predict_batch([photo for photo, _ in held_out_photos], top_k=2)
    right = 0
    for (photo, place), prediction in zip(held_out_photos, predictions):
        assert len(prediction.probabilities) == len(bundle.labels) == 4
        assert bundle.labels[int(np.argmax(prediction.probabilities))] == prediction.top_k[0]["place_id"]
        assert len(prediction.top_k) == 2
        if not prediction.unknown:
            assert prediction.place["place_id"] == prediction.top_k[0]["place_id"]
            assert prediction.place["location"] == bundle.places[prediction.place["place_id"]]["location"]
            assert prediction.place["nearby"] and prediction.place["map_url"]
            right += prediction.place["place_id"] == place
    assert right >= len(held_out_photos) // 2, f"{right} of {len(held_out_photos)} held-out photos right"


def test_unsure_answers_are_averaged_with_the_mirror_image(bundle, held_out_photos):
    """Photos under the bundle's margin get a second, mirrored pass (probabilities and features averaged);
    sure ones are answered from one pass."""
    photos = [photo for photo, _ in held_out_photos]
    pixels = np.stack([prepare_image(photo, bundle.input_size) for photo in photos])
    plain, plain_features = bundle.model.run(pixels)
    mirrored, mirrored_features = bundle.model.run(np.ascontiguousarray(pixels[:, :, ::-1]))
    top_two = np.sort(plain, axis=1)[:, -2:]
    unsure = top_two[:, 1] - top_two[:, 0] < bundle.mirror_below_margin
    assert bundle.mirror_below_margin == 0.5 and unsure.any() and not unsure.all(), unsure
    expected = np.where(unsure[:, None], (plain + mirrored) / 2, plain)
    expected_features = np.where(unsure[:, None], (plain_features + mirrored_features) / 2, plain_features)
    probabilities, features = run_with_mirror(bundle.model.run, pixels, bundle.mirror_below_margin)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    np.testing.assert_allclose(features, expected_features, atol=1e-5)
    answers = bundle.predict_batch(photos, top_k=2)
    np.testing.assert_allclose([answer.probabilities for answer in answers], expected, atol=1e-5)
    assert np.array_equal(run_with_mirror(bundle.model.run, pixels, 0.0)[0], plain)


def test_pil_images_bytes_and_paths_are_the_same_photo(bundle, held_out_photos):
    photo, _ = held_out_photos[0]
    from_path = bundle.predict(photo)
    assert bundle.predict(photo.read_bytes()).probabilities == from_path.probabilities
    assert bundle.predict(Image.open(photo)).probabilities == from_path.probabilities


def test_bad_photos_raise_domain_errors(bundle, held_out_photos):
    with pytest.raises(UnsupportedMediaType):
        bundle.predict(b"not an image at all")
    with pytest.raises(InvalidImage, match="cannot decode"):
        bundle.predict(held_out_photos[0][0].read_bytes()[:3000])  # truncated


def test_altered_or_foreign_bundles_are_refused(small_bundle, scratch_dir):
    altered = scratch_dir / "altered"
    shutil.copytree(small_bundle, altered, ignore=shutil.ignore_patterns("saved_model", "tensorboard"))
    labels = json.loads((altered / "labels.json").read_text())
    (altered / "labels.json").write_text(json.dumps(list(reversed(labels))))
    with pytest.raises(InvalidBundle, match="labels.json does not match"):
        Bundle.load(altered)
    (altered / "labels.json").write_bytes((small_bundle / "labels.json").read_bytes())
    manifest = json.loads((altered / "manifest.json").read_text())
    manifest["preprocessing"]["name"] = "someone-elses-v9"
    (altered / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidBundle, match="preprocessing"):
        Bundle.load(altered)
    with zipfile.ZipFile(scratch_dir / "partial.zip", "w") as archive:
        archive.write(small_bundle / "manifest.json", "manifest.json")
    with pytest.raises(InvalidBundle, match="model_int8.tflite is missing"):
        Bundle.load(scratch_dir / "partial.zip")
    with pytest.raises(InvalidBundle, match="no bundle"):
        Bundle.load(scratch_dir / "nowhere")
    (scratch_dir / "not-a.zip").write_text("hello")
    with pytest.raises(InvalidBundle, match="not a readable bundle"):
        Bundle.load(scratch_dir / "not-a.zip")


def test_exif_gps_photo(bundle, data_dir):
    photo = data_dir / "world30-originals" / "taj-mahal" / "Taj Mahal (25).jpg"
    prediction = bundle.predict(photo)
    assert prediction.gps["lat"] == pytest.approx(27.17349, abs=1e-4)
    assert prediction.gps["lng"] == pytest.approx(78.04250, abs=1e-4)
    nearest = prediction.gps["nearest_places"]
    assert nearest[0]["place_id"] == "taj-mahal" and nearest[0]["distance_km"] < 1
    assert [p["distance_km"] for p in nearest] == sorted(p["distance_km"] for p in nearest)


def test_thread_safe_under_concurrent_calls(bundle, held_out_photos):
    photos = [photo for photo, _ in held_out_photos] * 3
    sequential = [bundle.predict(p).probabilities for p in photos]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda p: bundle.predict(p).probabilities, photos))
    assert concurrent == sequential
    assert bundle.model._created <= bundle.model.pool_size == 2


def test_runtime_fallback_names_and_choice(monkeypatch):
    assert load_interpreter_class()[1] == "ai-edge-litert"
    monkeypatch.setenv("PLACEID_TFLITE_RUNTIME", "coreml")
    with pytest.raises(ValueError, match="PLACEID_TFLITE_RUNTIME"):
        load_interpreter_class()


def test_cli_table_json_and_errors(bundle_zip, held_out_photos, data_dir, scratch_dir):
    photo, _ = held_out_photos[0]
    broken = scratch_dir / "broken.jpg"
    broken.write_bytes(photo.read_bytes()[:3000])
    gps_photo = data_dir / "world30-originals" / "taj-mahal" / "Taj Mahal (25).jpg"
    result = edge_cli("predict", str(photo), str(broken), str(gps_photo), "--bundle", str(bundle_zip), "--json")
    assert result.returncode == 1  # one photo failed; the others were still answered
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["photo"] for line in lines] == [str(photo), str(broken), str(gps_photo)]
    assert lines[0]["model_version"] and len(lines[0]["top_k"]) == 3
    assert lines[1]["error"]["code"] == "invalid_image"
    assert lines[2]["gps"]["nearest_places"][0]["place_id"] == "taj-mahal"

    table = edge_cli("predict", str(photo), "--top-k", "2", env={"PLACEID_BUNDLE": str(bundle_zip)})
    assert table.returncode == 0, table.stderr
    first = lines[0]
    headline = "unknown place" if first["unknown"] else first["place"]["name"]
    assert table.stdout.startswith(f"{photo}: {headline}")
    assert "top " in table.stdout and first["model_version"] in table.stdout

    missing = edge_cli("predict", str(photo), env={"PLACEID_BUNDLE": ""})
    assert missing.returncode == 2 and "no bundle" in missing.stderr


def test_edge_never_imports_tensorflow(bundle_zip, held_out_photos):
    photo, _ = held_out_photos[0]
    code = ("import sys, placeid_edge; b = placeid_edge.Bundle.load(sys.argv[1]); b.predict(sys.argv[2]); "
            "print(b.model.runtime, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(bundle_zip), str(photo)], capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.split() == ["ai-edge-litert", "False", "False"], result.stderr


def test_same_answers_under_tflite_runtime_with_numpy_1(bundle, bundle_zip, held_out_photos):
    python = TFLITE_VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"no {TFLITE_VENV}: `make test` builds it (the edge package with tflite-runtime 2.14, numpy<2)")
    versions = subprocess.run([str(python), "-c", "import numpy, tflite_runtime; print(numpy.__version__)"],
                              capture_output=True, text=True, timeout=60)
    assert versions.returncode == 0 and int(versions.stdout.split(".")[0]) < 2, versions.stderr
    photos = [str(photo) for photo, _ in held_out_photos]
    result = edge_cli("predict", *photos, "--bundle", str(bundle_zip), "--json", python=python,
                      env={"PLACEID_TFLITE_RUNTIME": "tflite-runtime"})
    assert result.returncode == 0, result.stderr
    check = subprocess.run([str(python), "-c", "import placeid_edge.runtime as r; print(r.load_interpreter_class()[1])"],
                           capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                            "PLACEID_TFLITE_RUNTIME": "tflite-runtime"})
    assert check.stdout.strip() == "tflite-runtime"
    # The two runtimes' int8 kernels round differently: equal answers where the model is sure, close elsewhere.
    for line, photo in zip(result.stdout.splitlines(), photos):
        other, ours = json.loads(line), bundle.predict(photo)
        assert np.abs(np.subtract(other["probabilities"], ours.probabilities)).max() <= 0.1
        first, second = sorted(ours.probabilities, reverse=True)[:2]
        if first - second >= 0.2:
            assert other["top_k"][0]["place_id"] == ours.top_k[0]["place_id"]
