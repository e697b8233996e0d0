"""Regression tests of the hostile-input review: paths from the serving pointer and from bundle manifests,
decompression bombs and corrupt files on every path, the model cache's stored error, who may move the serving
pointer, and the predict function's answers to malformed, oversized and many-part requests."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import traceback
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from placeid.registry import SERVING_OBJECT, Registry
from placeid.serving import ModelCache
from placeid_edge.bundle import Bundle
from placeid_edge.errors import InvalidBundle, InvalidImage, ModelUnavailable
from tests.serving import encoded, jpeg_bytes
from tests.test_predict_function import assert_error, client, make_client, served  # noqa: F401 - fixtures

EDGE_PYTHON = sys.executable


def write_pointer(bucket, version: str) -> None:
    bucket.blob(SERVING_OBJECT).upload_from_string(json.dumps({"version": version, "history": []}))


# -- paths from the serving pointer and from manifests ---------------------------------------------------------

@pytest.mark.parametrize("version", ["../victim", "/abs/victim", "..", "20261127T002430Z-x/../../victim"])
def test_a_pointer_naming_a_path_never_touches_the_filesystem(make_client, bucket, scratch_dir,  # noqa: F811
                                                              version):
    victim = scratch_dir / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    write_pointer(bucket, version)
    api = make_client(PLACEID_MODEL_CACHE=scratch_dir / "model-cache")
    body = assert_error(api.post("/", data=jpeg_bytes(), content_type="image/jpeg"), 503, "model_unavailable")
    assert "victim" not in body["error"]["message"]
    assert (victim / "keep.txt").read_text() == "precious"
    assert not any(p.name != "model-cache" for p in scratch_dir.iterdir() if p.name not in ("victim",))


def test_a_pointer_to_an_unregistered_version_is_not_served(make_client, bucket, served):  # noqa: F811
    # The bundle exists in the bucket under another name, but no models/{version} record names it.
    for blob in list(bucket.list_blobs(prefix=f"models/{served}/")):
        bucket.copy_blob(blob, bucket, blob.name.replace(served, "20990101T000000Z-mobilenet-unregistered"))
    write_pointer(bucket, "20990101T000000Z-mobilenet-unregistered")
    assert_error(make_client().post("/", data=jpeg_bytes(), content_type="image/jpeg"), 503, "model_unavailable")


def _rewrite_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("changes", [{"labels_file": "/etc/hostname"}, {"model_file": "../model_int8.tflite"},
                                     {"places_file": "sub/places.json"},
                                     {"rejection": {"kind": "prototype_cosine", "threshold": 0.5,
                                                    "prototypes_file": "../../evil.npy"}}])
def test_manifest_file_names_never_leave_the_bundle(small_bundle, scratch_dir, changes):
    copy = scratch_dir / "bundle"
    shutil.copytree(small_bundle, copy)
    _rewrite_manifest(copy, **changes)
    with pytest.raises(InvalidBundle, match="must be"):
        Bundle.load(copy)


def test_serving_never_downloads_a_file_a_manifest_names(settings, db, bucket, small_bundle, scratch_dir, capsys):
    from tests.serving import publish

    version = publish(db, bucket, small_bundle, scratch_dir)
    manifest = json.loads(bucket.blob(f"models/{version}/manifest.json").download_as_bytes())
    manifest["rejection"]["prototypes_file"] = "../../escaped.npy"
    bucket.blob(f"models/{version}/manifest.json").upload_from_string(json.dumps(manifest))
    bucket.blob(f"models/{version}/../../escaped.npy").upload_from_string(b"x")
    cache = ModelCache(settings.__class__.from_env(model_cache_dir=scratch_dir / "deep" / "cache"),
                       Registry(db, bucket))
    with pytest.raises(ModelUnavailable):
        cache.bundle()
    assert not list(scratch_dir.rglob("escaped.npy"))
    assert "must be 'prototypes.npy'" in capsys.readouterr().out


def test_a_bundle_zip_member_is_capped_before_it_is_inflated(small_bundle, scratch_dir, monkeypatch):
    import placeid_edge.bundle

    path = scratch_dir / "bundle.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for item in small_bundle.iterdir():
            if item.is_file():
                archive.write(item, item.name)
    monkeypatch.setattr(placeid_edge.bundle, "MAX_FILE_BYTES", 1000)
    with pytest.raises(InvalidBundle, match="over the limit"):
        Bundle.load(path)


@pytest.mark.parametrize("manifest", [{"files": {}}, [], {"version": 3, "input_size": "x"}])
def test_a_broken_bundle_is_a_clean_error_in_the_edge_cli(small_bundle, scratch_dir, manifest, held_out_photos):
    copy = scratch_dir / "bundle"
    shutil.copytree(small_bundle, copy)
    if isinstance(manifest, dict) and "version" in manifest:  # keep the hashes, break the types
        _rewrite_manifest(copy, **manifest)
    else:
        (copy / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([EDGE_PYTHON, "-m", "placeid_edge.cli", "predict", str(held_out_photos[0][0]),
                           "--bundle", str(copy)], capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr and last.startswith("placeid-edge:"), done.stderr


# -- bombs and corrupt files -------------------------------------------------------------------------------------

def _png_bomb(side: int) -> bytes:
    out = io.BytesIO()
    image = Image.new("L", (side, side))
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (37.0, 33.0, 58.0), 3: "E", 4: (126.0, 58.0, 40.0)}  # GPS: read late, if ever
    image.save(out, "PNG", exif=exif, optimize=True)
    return out.getvalue()


def test_a_png_bomb_is_refused_from_its_header_without_decoding(small_bundle, scratch_dir):
    """Measured in a fresh process: the refusal costs no memory proportional to the pixels."""
    bomb = scratch_dir / "bomb.png"
    bomb.write_bytes(_png_bomb(12_000))  # 144 Mpx of one colour: a few hundred KB on disk
    probe = f"""
import resource, sys
from placeid_edge.bundle import Bundle
from placeid_edge.errors import InvalidImage
bundle = Bundle.load({str(small_bundle)!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    bundle.predict({str(bomb)!r})
except InvalidImage as exc:
    print("refused", exc.message)
print("grew_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "refused decompression bomb" in done.stdout, done.stdout + done.stderr
    grew_kib = int(done.stdout.split("grew_kib")[1])
    assert grew_kib < 64 * 1024, f"refusing the bomb grew the process by {grew_kib} KiB"


def test_pillow_keeps_a_finite_backstop():
    import placeid_edge.imaging  # noqa: F401 - sets it

    assert Image.MAX_IMAGE_PIXELS and Image.MAX_IMAGE_PIXELS >= 40_000_000


def _truncated_png(photo: Path) -> bytes:
    data = encoded(Image.open(photo).convert("RGB"), "PNG")
    return data[: len(data) * 2 // 3]


def test_a_truncated_png_is_422_on_every_path(small_bundle, client, held_out_photos):  # noqa: F811
    broken = _truncated_png(held_out_photos[0][0])
    bundle = Bundle.load(small_bundle)
    with pytest.raises(InvalidImage):
        bundle.predict(broken)
    assert_error(client.post("/", data=broken, content_type="image/png"), 422, "invalid_image")
    assert_error(client.post("/v1/models/placeid:predict",
                             json={"instances": [{"b64": base64.b64encode(broken).decode()}]}), 422, "invalid_image")


# -- the model cache's stored error ----------------------------------------------------------------------------

def test_the_no_model_error_does_not_grow_with_each_request(settings, db, bucket, scratch_dir):
    write_pointer(bucket, "../nowhere")
    cache = ModelCache(settings.__class__.from_env(model_cache_dir=scratch_dir / "cache", model_refresh_s=0.0),
                       Registry(db, bucket))
    depths = []
    for _ in range(50):
        try:
            cache.bundle()
        except ModelUnavailable as exc:
            depths.append(len(traceback.extract_tb(exc.__traceback__)))
    assert len(depths) == 50 and max(depths) == min(depths) <= 3, depths


# -- who may move the serving pointer ----------------------------------------------------------------------------

def test_the_pointer_lives_in_the_models_bucket_not_firestore(db, bucket, served, make_client):  # noqa: F811
    db.collection("config").document("serving").set({"version": "20990101T000000Z-mobilenet-forged"})
    response = make_client().post("/", data=jpeg_bytes(), content_type="image/jpeg")
    assert response.status_code == 200 and response.get_json()["model_version"] == served
    assert json.loads(bucket.blob(SERVING_OBJECT).download_as_bytes())["version"] == served


def test_ingest_cannot_write_the_models_bucket():
    """In the cloud the pointer is an object of the models bucket, which the ingest account may read (to vet photos
    with the served model) but cannot write."""
    from tests.test_infra import resources

    grants = [*resources("google_storage_bucket_iam_member").values(), *resources("google_project_iam_member").values()]
    ingest = [grant for grant in grants if "google_service_account.ingest" in grant["member"]]
    on_models = [grant["role"] for grant in ingest if "models" in grant.get("bucket", "")]
    assert ingest and on_models == ["roles/storage.objectViewer"]
    assert not any(grant["role"].startswith("roles/storage") for grant in ingest if "project" in grant)


# -- malformed, oversized and many-part requests ---------------------------------------------------------------

def test_deeply_nested_json_is_400(client):  # noqa: F811
    body = "[" * 100_000 + "]" * 100_000
    assert_error(client.post("/v1/models/placeid:predict", data=body, content_type="application/json"), 400,
                 "bad_request")


def test_a_chunked_json_body_over_the_limit_is_413(make_client, served):  # noqa: F811
    api = make_client(PLACEID_MAX_REQUEST_BYTES=50_000)
    body = b'{"instances": [{"b64": "' + b"A" * 100_000 + b'"}]}'
    response = api.post("/v1/models/placeid:predict", input_stream=io.BytesIO(body), content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"},  # no Content-Length: counted as it arrives
                           environ_overrides={"wsgi.input_terminated": True})
    assert_error(response, 413, "too_large")


def test_many_small_multipart_parts_are_named_as_such(client):  # noqa: F811
    fields = {f"field{i}": "x" for i in range(50)}
    fields["image"] = (io.BytesIO(jpeg_bytes()), "photo.jpg")
    body = assert_error(client.post("/", data=fields, content_type="multipart/form-data"), 400, "bad_request")
    assert "parts" in body["error"]["message"] and "larger" not in body["error"]["message"]


def test_answers_carry_security_headers_and_the_page_a_policy(client):  # noqa: F811
    page = client.get("/")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    policy = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy and "'unsafe-eval'" not in policy
    assert "script-src 'self' 'wasm-unsafe-eval' 'sha256-" in policy  # its scripts, and the import map by hash
    api = client.post("/", data=b"not an image", content_type="image/jpeg")
    assert api.headers["X-Content-Type-Options"] == "nosniff" and api.headers["X-Frame-Options"] == "DENY"


def test_errors_name_no_bucket_and_no_local_path(make_client, bucket, served, scratch_dir):  # noqa: F811
    bucket.blob(f"models/{served}/model_int8.tflite").upload_from_string(b"altered")
    api = make_client(PLACEID_MODEL_CACHE=scratch_dir / "cache-elsewhere")
    response = api.post("/", data=jpeg_bytes(), content_type="image/jpeg")
    text = response.get_data(as_text=True)
    assert response.status_code == 503 and bucket.name not in text and str(scratch_dir) not in text


def test_serving_downloads_no_more_than_the_file_limit(settings, db, bucket, small_bundle, scratch_dir,
                                                       monkeypatch, capsys):
    import placeid.serving
    from tests.serving import publish

    publish(db, bucket, small_bundle, scratch_dir)
    monkeypatch.setattr(placeid.serving, "MAX_FILE_BYTES", 2000)  # the model is far larger
    cache = ModelCache(settings.__class__.from_env(model_cache_dir=scratch_dir / "cache"), Registry(db, bucket))
    with pytest.raises(ModelUnavailable):
        cache.bundle()
    assert "larger than 2000 bytes" in capsys.readouterr().out
    assert not [p for p in (scratch_dir / "cache").rglob("*") if p.is_file()]  # staging removed


def test_a_contended_transaction_is_retried_not_recorded_as_an_error():
    """The Firestore client gives up on a transaction that keeps conflicting with a ValueError; that is contention
    (identical uploads at once), so the event is retried, not recorded as ``error``."""
    from google.cloud.firestore_v1.transaction import _EXCEED_ATTEMPTS_TEMPLATE

    from placeid.store import is_transient

    assert is_transient(ValueError(_EXCEED_ATTEMPTS_TEMPLATE.format(5)))
    assert not is_transient(ValueError("image mode not understood"))
