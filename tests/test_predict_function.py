"""The predict function in-process (functions_framework.create_app + test client) with a real bundle from the
registry, the real Firestore and bucket emulators: answers, the TF Serving shape, and every error code."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from functions_framework import create_app
from PIL import Image

import placeid.predict_http
from placeid_edge import imaging
from placeid.config import REPO_ROOT
from placeid_edge.bundle import Bundle
from tests.serving import encoded, jpeg_bytes, publish

SOURCE = str(REPO_ROOT / "functions" / "predict" / "main.py")


@pytest.fixture
def make_client(settings, catalog, scratch_dir, monkeypatch):
    """A factory of test clients for a fresh function instance configured by environment variables."""
    def make(**env):
        monkeypatch.setenv("PLACEID_MODEL_CACHE", str(scratch_dir / "model-cache"))
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        monkeypatch.setattr(placeid.predict_http, "_service", None)  # a new instance: a cold start
        return create_app(target="predict", source=SOURCE).test_client()

    return make


@pytest.fixture
def served(db, bucket, small_bundle, scratch_dir, catalog) -> str:
    return publish(db, bucket, small_bundle, scratch_dir)


@pytest.fixture
def client(make_client, served):
    return make_client()


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"]["code"] == code and body["error"]["status"] == status and body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def test_multipart_and_raw_body_give_the_same_answer(client, served, held_out_photos, small_bundle):
    photo, place = held_out_photos[0]
    data = photo.read_bytes()
    multipart = client.post("/", data={"image": (io.BytesIO(data), photo.name)}, content_type="multipart/form-data")
    raw = client.post("/", data=data, content_type="image/jpeg")
    assert multipart.status_code == raw.status_code == 200
    answer = multipart.get_json()
    assert answer["model_version"] == served
    assert answer["probabilities"] == raw.get_json()["probabilities"]
    assert len(answer["probabilities"]) == 4 and abs(sum(answer["probabilities"]) - 1) < 0.02
    # The same bytes through the edge package in-process give the same numbers.
    expected = Bundle.load(small_bundle).predict(data)
    assert answer["probabilities"] == expected.probabilities and answer["unknown"] == expected.unknown
    probabilities = [c["probability"] for c in answer["top_k"]]
    assert len(answer["top_k"]) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert answer["timing_ms"]["total"] > 0
    one = client.post("/", data=data, content_type="image/jpeg", query_string={"top_k": 1}).get_json()
    assert [c["place_id"] for c in one["top_k"]] == [answer["top_k"][0]["place_id"]]


def test_place_details_come_from_firestore(client, db, held_out_photos):
    """Place names and nearby sites are read from Firestore (fresher than the bundle's snapshot)."""
    answers = {}
    for photo, place in held_out_photos:
        answer = client.post("/", data=photo.read_bytes(), content_type="image/jpeg").get_json()
        if not answer["unknown"]:
            answers[answer["place"]["place_id"]] = answer
    assert answers, "the small model recognised none of its held-out photos"
    place_id, answer = next(iter(answers.items()))
    place = db.collection("places").document(place_id).get().to_dict()
    assert answer["place"]["name"] == place["name"]
    assert answer["place"]["location"] == {"lat": place["location"].latitude, "lng": place["location"].longitude}
    assert [s["name"] for s in answer["place"]["nearby"]] == [s["name"] for s in place["nearby"]]
    assert answer["place"]["map_url"].startswith("https://www.openstreetmap.org/?mlat=")


def test_place_details_are_cached_with_a_ttl(make_client, served, db, held_out_photos):
    client = make_client(PLACEID_PLACES_TTL_S=0)  # no reuse: every answer reads Firestore again
    known = None
    for photo, _ in held_out_photos:
        answer = client.post("/", data=photo.read_bytes(), content_type="image/jpeg").get_json()
        if not answer["unknown"]:
            known = photo, answer["place"]["place_id"]
            break
    assert known
    photo, place_id = known
    db.collection("places").document(place_id).update({"name": "Renamed in Firestore"})
    assert client.post("/", data=photo.read_bytes(), content_type="image/jpeg").get_json()["place"]["name"] \
        == "Renamed in Firestore"
    cached = make_client(PLACEID_PLACES_TTL_S=3600)
    first = cached.post("/", data=photo.read_bytes(), content_type="image/jpeg").get_json()["place"]["name"]
    db.collection("places").document(place_id).update({"name": "Renamed again"})
    assert cached.post("/", data=photo.read_bytes(), content_type="image/jpeg").get_json()["place"]["name"] == first


def test_tf_serving_predict_status_and_metadata(client, served, held_out_photos, small_bundle):
    photos = [photo.read_bytes() for photo, _ in held_out_photos[:3]]
    body = {"instances": [{"b64": base64.b64encode(photos[0]).decode()},
                          {"b64": base64.b64encode(photos[1]).decode()},
                          {"images": {"b64": base64.urlsafe_b64encode(photos[2]).decode()}}]}
    response = client.post("/v1/models/placeid:predict", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    predictions = response.get_json()["predictions"]
    labels = json.loads((small_bundle / "labels.json").read_text())
    assert len(predictions) == 3
    for prediction, data in zip(predictions, photos):
        assert prediction["classes"] == labels and len(prediction["scores"]) == len(labels)
        single = client.post("/", data=data, content_type="image/jpeg").get_json()
        assert prediction["scores"] == single["probabilities"]

    status = client.get("/v1/models/placeid").get_json()
    assert status["model_version_status"] == [{"version": served, "state": "AVAILABLE",
                                               "status": {"error_code": "OK", "error_message": ""}}]
    assert status["metadata"]["labels"] == labels and status["metadata"]["input_size"] == 96
    assert status["metadata"]["runtime"] == "ai-edge-litert"
    metadata = client.get("/v1/models/placeid/metadata").get_json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["images"]["tensor_shape"] == [-1, 96, 96, 3]
    assert metadata["model_spec"]["version"] == served


def test_the_page_is_served(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert b'type="file"' in response.data and b'src="/assets/page.js"' in response.data
    script = client.get("/assets/page.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript" and b"fetch(" in script.data


def test_bad_requests_are_400(client):
    assert_error(client.post("/", data={"photo": (io.BytesIO(jpeg_bytes()), "a.jpg")},
                             content_type="multipart/form-data"), 400, "bad_request")
    assert_error(client.post("/", data=b"", content_type="image/jpeg"), 400, "bad_request")
    assert_error(client.post("/", data=jpeg_bytes(), content_type="image/jpeg", query_string={"top_k": "x"}),
                 400, "bad_request")
    predict = "/v1/models/placeid:predict"
    assert_error(client.post(predict, data=b"{not json", content_type="application/json"), 400, "bad_request")
    assert_error(client.post(predict, json={"instances": []}), 400, "bad_request")
    assert_error(client.post(predict, json={"instances": ["abc"]}), 400, "bad_request")
    assert_error(client.post(predict, json={"instances": [{"b64": "***"}]}), 400, "bad_request")
    assert_error(client.post(predict, json={"signature_name": "other", "instances": [{"b64": "AA=="}]}),
                 400, "bad_request")
    too_many = {"instances": [{"b64": base64.b64encode(jpeg_bytes()).decode()}] * 17}
    assert "at most 16" in assert_error(client.post(predict, json=too_many), 400, "bad_request")["error"]["message"]


def test_unknown_routes_and_methods(client):
    assert_error(client.get("/v2/anything"), 404, "not_found")
    assert_error(client.put("/", data=b"x"), 405, "method_not_allowed")
    assert_error(client.get("/v1/models/placeid:predict"), 405, "method_not_allowed")


def test_too_large_is_413(make_client, served, world30_photos):
    client = make_client(PLACEID_MAX_REQUEST_BYTES=20_000)
    data = world30_photos["petra"][0].read_bytes()
    assert len(data) > 20_000
    assert_error(client.post("/", data=data, content_type="image/jpeg"), 413, "too_large")
    assert_error(client.post("/", data={"image": (io.BytesIO(data), "p.jpg")}, content_type="multipart/form-data"),
                 413, "too_large")
    assert_error(client.post("/v1/models/placeid:predict",
                             json={"instances": [{"b64": base64.b64encode(data).decode()}]}), 413, "too_large")
    assert client.post("/", data=jpeg_bytes((64, 64)), content_type="image/jpeg").status_code == 200


def test_unsupported_types_are_415(client):
    assert_error(client.post("/", data=b"hello", content_type="text/plain"), 415, "unsupported_media_type")
    gif = encoded(Image.new("RGB", (64, 64), "red"), "GIF")
    assert_error(client.post("/", data=gif, content_type="image/gif"), 415, "unsupported_media_type")
    assert_error(client.post("/", data=b"%PDF-1.4 not an image", content_type="image/jpeg"),
                 415, "unsupported_media_type")


def test_undecodable_images_are_422(client):
    truncated = jpeg_bytes((640, 480))[:2000]
    assert_error(client.post("/", data=truncated, content_type="image/jpeg"), 422, "invalid_image")
    assert_error(client.post("/", data=jpeg_bytes((3000, 10)), content_type="image/jpeg"), 422, "invalid_image")
    body = {"instances": [{"b64": base64.b64encode(jpeg_bytes()).decode()},
                          {"b64": base64.b64encode(truncated).decode()}]}
    error = assert_error(client.post("/v1/models/placeid:predict", json=body), 422, "invalid_image")
    assert error["error"]["message"].startswith("instances[1]:")


def test_no_model_yet_is_503(make_client, settings, catalog):
    client = make_client()
    assert_error(client.post("/", data=jpeg_bytes(), content_type="image/jpeg"), 503, "model_unavailable")
    assert_error(client.get("/v1/models/placeid"), 503, "model_unavailable")
    assert client.get("/").status_code == 200  # the page itself needs no model


def test_cors_is_configurable(make_client, served):
    closed = make_client()
    assert "Access-Control-Allow-Origin" not in closed.get("/", headers={"Origin": "https://app.example"}).headers
    client = make_client(PLACEID_CORS_ORIGINS="https://app.example, https://other.example")
    preflight = client.options("/", headers={"Origin": "https://app.example",
                                             "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    answer = client.post("/", data=jpeg_bytes(), content_type="image/jpeg", headers={"Origin": "https://app.example"})
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    stranger = client.post("/", data=jpeg_bytes(), content_type="image/jpeg", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in stranger.headers


def test_negative_photos_are_answered_unknown(client, data_dir):
    """Photos with no landmark: the bundle's rule says 'unknown' for most, and the answer still lists candidates."""
    negatives = sorted(p for p in (data_dir / "negatives" / "images").rglob("*") if p.is_file())
    negatives = negatives[-12:]  # the bundle's rule was calibrated on the first 60
    body = {"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in negatives]}
    predictions = client.post("/v1/models/placeid:predict", json=body).get_json()["predictions"]
    unknown = [p for p in predictions if p["unknown"]]
    assert len(unknown) >= len(negatives) // 2
    for prediction in predictions:
        rule = prediction["rejection"]
        assert prediction["unknown"] == (rule["score"] < rule["threshold"])
    for prediction in unknown:
        assert prediction["place"] is None and len(prediction["top_k"]) == 3


def test_exif_gps_is_reported_with_the_nearest_known_places(client, data_dir):
    photo = data_dir / "world30-originals" / "taj-mahal" / "Taj Mahal (25).jpg"
    answer = client.post("/", data=photo.read_bytes(), content_type="image/jpeg").get_json()
    gps = answer["gps"]
    assert gps["lat"] == pytest.approx(27.1735, abs=1e-3) and gps["lng"] == pytest.approx(78.0425, abs=1e-3)
    assert gps["nearest_places"][0]["place_id"] == "taj-mahal" and gps["nearest_places"][0]["distance_km"] < 1
    assert client.post("/", data=jpeg_bytes(), content_type="image/jpeg").get_json()["gps"] is None


def test_a_promoted_bundle_that_cannot_be_fetched_is_503(make_client, served, bucket, capsys):
    bucket.blob(f"models/{served}/labels.json").delete()
    client = make_client()
    body = assert_error(client.post("/", data=jpeg_bytes(), content_type="image/jpeg"), 503, "model_unavailable")
    # The client learns that there is no model; which file is missing from which bucket is for the log only.
    assert "labels.json" not in body["error"]["message"] and bucket.name not in body["error"]["message"]
    assert "no labels.json" in capsys.readouterr().out


def test_request_bodies_are_reserved_from_their_memory_budget_before_they_are_read(make_client, served,
                                                                                    world30_photos):
    """Twice a body's declared length is reserved before a byte of it is read and held until the answer: a
    budget smaller than that refuses at once (413, every route); one that holds a single body makes concurrent
    requests take turns (all answered, never more reserved than the budget); a budget kept full answers 503 once
    the wait is over, without reading the body."""
    data = world30_photos["petra"][0].read_bytes()
    small = make_client(PLACEID_BODY_BUDGET_MB=1.5 * len(data) / 2**20)
    for response in (small.post("/", data=data, content_type="image/jpeg"),
                     small.post("/", data={"image": (io.BytesIO(data), "p.jpg")}, content_type="multipart/form-data"),
                     small.post("/v1/models/placeid:predict",
                                json={"instances": [{"b64": base64.b64encode(data).decode()}]})):
        body = assert_error(response, 413, "too_large")
        assert "PLACEID_BODY_BUDGET_MB" in body["error"]["message"]

    one_body = 2 * len(data) + 1024
    client = make_client(PLACEID_BODY_BUDGET_MB=one_body / 2**20, PLACEID_DECODE_WAIT_S=30)
    assert client.post("/", data=data, content_type="image/jpeg").status_code == 200  # the instance starts
    budget = imaging.body_budget
    assert budget.limit_bytes == one_body
    budget.reset_peak()
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: client.application.test_client().post(
            "/", data=data, content_type="image/jpeg").status_code, range(6)))
    assert statuses == [200] * 6
    assert 2 * len(data) <= budget.peak <= one_body

    client = make_client(PLACEID_BODY_BUDGET_MB=one_body / 2**20, PLACEID_DECODE_WAIT_S=0.3)
    assert client.get("/v1/models/placeid").status_code == 200
    with budget.reserve(one_body, "held by the test"):
        body = assert_error(client.post("/", data=data, content_type="image/jpeg"), 503, "unavailable")
    assert "PLACEID_BODY_BUDGET_MB" not in body["error"]["message"] and "busy" in body["error"]["message"]
    assert client.post("/", data=data, content_type="image/jpeg").status_code == 200
