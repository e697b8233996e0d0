"""The model vets the collection: the ingest function (in-process, real emulators) with a real bundle served."""

from __future__ import annotations

from pathlib import Path

import pytest
from functions_framework import create_app

from placeid.config import REPO_ROOT
from placeid.vetting import judge
from placeid_edge.bundle import Bundle, Prediction
from tests.events import post_event, storage_event, upload
from tests.serving import publish
from training.dataset import load_negatives

SOURCE = str(REPO_ROOT / "functions" / "ingest" / "main.py")
#: The threshold the tests serve with: the small test model is not sure enough for its own calibration.
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def answers(small_bundle, held_out_photos, data_dir) -> dict:
    """What the served model answers for held-out photos and unseen negatives, to pick the tests' photos."""
    bundle = Bundle.load(small_bundle)
    sure = [(path, label) for path, label in held_out_photos
            if (p := bundle.predict(path)) and not p.unknown and p.top_k[0]["place_id"] == label
            and p.top_k[0]["probability"] >= THRESHOLD + 0.1]
    negatives = [Path(e.source) for e in load_negatives(data_dir / "negatives" / "images")[60:]]  # it saw the first 60
    unknown = [path for path in negatives if bundle.predict(path).unknown]
    assert sure and unknown, "the test model recognises none of its held-out photos or rejects no negative"
    return {"sure": sure, "unknown": unknown}


def ingest(client, bucket, db, name: str, data: bytes, metadata: dict | None = None) -> dict:
    resource = upload(bucket, name, data, metadata)
    assert post_event(client, storage_event(resource)).status_code == 200
    [record] = [s.to_dict() for s in db.collection("images").stream() if s.to_dict()["source"]["name"] == name]
    return record


@pytest.fixture
def client(catalog, scratch_dir, monkeypatch):
    monkeypatch.setenv("PLACEID_MODEL_CACHE", str(scratch_dir / "model-cache"))  # this test's models only
    return create_app(target="ingest", source=SOURCE).test_client()


@pytest.fixture
def served(db, bucket, small_bundle, scratch_dir) -> str:
    return publish(db, bucket, small_bundle, scratch_dir, version="99990101T000000Z-mobilenet-vetting",
                   manifest_changes={"vetting": {"auto_label_threshold": THRESHOLD}})


def test_the_model_labels_an_inbox_photo(served, client, db, bucket, answers):
    photo, place = answers["sure"][0]
    labelled = ingest(client, bucket, db, f"raw/inbox/{photo.name}", photo.read_bytes())
    assert labelled["status"] == "accepted" and labelled["place_id"] == place and labelled["label_source"] == "model"
    assert labelled["vetting"]["outcome"] == "labelled" and labelled["vetting"]["model_version"] == served
    assert labelled["curated"]["path"].startswith(f"curated/{place}/")
    assert bucket.blob(labelled["curated"]["path"]).exists()


def test_a_label_the_model_confidently_contradicts_is_suspect(served, client, db, bucket, answers):
    photo, place = answers["sure"][0]
    other = next(p for p in ("petra", "louvre", "colosseum", "taj-mahal") if p != place)
    wrong = ingest(client, bucket, db, f"raw/{other}/{photo.name}", photo.read_bytes())
    assert wrong["status"] == "quarantined" and wrong["reason"].startswith(f"suspect: labelled '{other}', the model")
    assert wrong["place_id"] == other  # the label is kept; the model's view is the suggestion
    assert wrong["vetting"]["suggestion"] == {"action": "relabel", "place_id": place,
                                              "probability": wrong["vetting"]["top_k"][0]["probability"]}
    assert "curated" not in wrong


def test_a_photo_of_no_place_filed_under_a_place_is_suspect(served, client, db, bucket, answers):
    negative = answers["unknown"][0]
    record = ingest(client, bucket, db, f"raw/petra/{negative.name}", negative.read_bytes())
    assert record["status"] == "quarantined"
    assert record["reason"] == "suspect: labelled 'petra', the model says no known place"
    assert record["vetting"]["unknown"] is True and record["vetting"]["suggestion"]["action"] == "reject"
    assert record["vetting"]["rejection"]["score"] < record["vetting"]["rejection"]["threshold"]


def test_a_photo_the_model_agrees_with_is_accepted_with_its_answer(served, client, db, bucket, answers):
    photo, place = answers["sure"][0]
    record = ingest(client, bucket, db, f"raw/{place}/{photo.name}", photo.read_bytes())
    assert record["status"] == "accepted" and record["label_source"] == "path"
    assert record["vetting"]["outcome"] == "agrees" and record["vetting"]["suggestion"] is None
    assert record["vetting"]["top_k"][0]["place_id"] == place and len(record["vetting"]["top_k"]) == 3


def test_a_model_that_is_never_sure_labels_nothing(db, bucket, small_bundle, scratch_dir, client, answers):
    publish(db, bucket, small_bundle, scratch_dir, version="99990101T000000Z-mobilenet-never-sure",
            manifest_changes={"vetting": {"auto_label_threshold": None}})
    photo, place = answers["sure"][0]
    record = ingest(client, bucket, db, f"raw/inbox/{photo.name}", photo.read_bytes())
    assert record["status"] == "quarantined" and record["reason"].startswith("unsure: unlabelled")
    assert record["place_id"] is None and record["vetting"]["outcome"] == "unsure"
    assert record["vetting"]["suggestion"]["action"] == "accept"
    assert record["vetting"]["suggestion"]["place_id"] == place


def test_without_a_served_model_photos_are_ingested_unchecked(client, db, bucket, answers):
    photo, place = answers["sure"][0]
    labelled = ingest(client, bucket, db, f"raw/{place}/{photo.name}", photo.read_bytes())
    assert labelled["status"] == "accepted" and labelled["vetting"] == {"outcome": "unchecked",
                                                                      "why": "no model is being served"}
    inbox = ingest(client, bucket, db, "raw/inbox/x.jpg", answers["sure"][1 % len(answers["sure"])][0].read_bytes())
    assert inbox["status"] == "quarantined" and inbox["reason"].startswith("no place label")


def prediction(places_and_probabilities: list[tuple[str, float]], unknown: bool = False) -> Prediction:
    top_k = [{"place_id": place, "name": place, "probability": p} for place, p in places_and_probabilities]
    return Prediction("v1", unknown, None, top_k, [p for _, p in places_and_probabilities],
                      {"rule": "max_prob", "threshold": 0.5, "score": places_and_probabilities[0][1]}, None)


def test_verdicts_and_suggestions():
    """Each row of the README's table: who labelled the photo, what the model says, what ingest does."""
    sure, unsure = prediction([("petra", 0.97), ("louvre", 0.02)]), prediction([("petra", 0.6), ("louvre", 0.3)])
    nothing = prediction([("petra", 0.3), ("louvre", 0.2)], unknown=True)
    relabel_petra = {"action": "relabel", "place_id": "petra", "probability": 0.97}
    reject = {"action": "reject", "place_id": None}
    cases = [
        ("petra", sure, "agrees", "petra", None, None),
        ("petra", unsure, "agrees", "petra", None, None),
        ("louvre", unsure, "agrees", "louvre", None, None),
        ("louvre", sure, "suspect", "louvre", "suspect: labelled 'louvre', the model says petra (p = 0.97)",
         relabel_petra),
        ("louvre", nothing, "suspect", "louvre", "suspect: labelled 'louvre', the model says no known place", reject),
        (None, sure, "labelled", "petra", None, {"action": "accept", "place_id": "petra", "probability": 0.97}),
        (None, unsure, "unsure", None, "unsure: unlabelled, and the model says petra (p = 0.60), below its "
         "labelling threshold", {"action": "accept", "place_id": "petra", "probability": 0.6}),
        (None, nothing, "unsure", None, "unsure: unlabelled, and the model says no known place", reject),
    ]
    for label, answer, outcome, place_id, reason, suggestion in cases:
        verdict = judge(answer, label, 0.9)
        assert (verdict.outcome, verdict.place_id, verdict.reason, verdict.record["suggestion"]) == \
            (outcome, place_id, reason, suggestion), (label, answer.top_k[0])
        assert verdict.quarantine == (outcome in ("suspect", "unsure"))
    assert judge(sure, None, None).outcome == "unsure"  # a model that is never sure labels nothing


def test_judge_is_sure_only_from_the_threshold(small_bundle, answers):
    """The verdict rules on one real answer: labelled or unsure by the threshold; agrees or suspect by the label."""
    bundle = Bundle.load(small_bundle)
    photo, place = answers["sure"][0]
    prediction = bundle.predict(photo)
    p = prediction.top_k[0]["probability"]
    assert judge(prediction, None, p).outcome == "labelled" and judge(prediction, None, p).place_id == place
    assert judge(prediction, None, p + 1e-6).outcome == "unsure"
    assert judge(prediction, place, p).outcome == "agrees"
    assert judge(prediction, "somewhere-else", p).outcome == "suspect"
    assert judge(prediction, "somewhere-else", p + 1e-6).outcome == "agrees"  # not sure enough to contradict


def test_rescan_after_a_promote_flags_suspects_and_suggests_labels(client, db, bucket, small_bundle, scratch_dir,
                                                                    answers, settings):
    """Photos ingested before any model are re-scored once one is served: an accepted photo of no place is
    quarantined as a suspect (its claims and curated copy go), an unlabelled one gets the model's suggestion, which
    review then applies; a second rescan finds nothing left to score (resumable)."""
    from placeid.registry import Registry
    from placeid.review import Reviewer
    from placeid.serving import ModelCache

    photo, place = answers["sure"][0]
    negative = answers["unknown"][0]
    agreeing = ingest(client, bucket, db, f"raw/{place}/{photo.name}", photo.read_bytes())
    stranger = ingest(client, bucket, db, f"raw/{place}/{negative.name}", negative.read_bytes())
    other = answers["sure"][1 % len(answers["sure"])]
    inbox = ingest(client, bucket, db, f"raw/inbox/{other[0].name}", other[0].read_bytes())
    assert [agreeing["status"], stranger["status"], inbox["status"]] == ["accepted", "accepted", "quarantined"]

    version = publish(db, bucket, small_bundle, scratch_dir, version="99990101T000000Z-mobilenet-vetting",
                      manifest_changes={"vetting": {"auto_label_threshold": THRESHOLD}})
    cache = ModelCache(settings.__class__.from_env(model_cache_dir=scratch_dir / "cli-cache"), Registry(db, bucket))
    reviewer = Reviewer()
    seen = []
    actions = reviewer.rescan(cache.bundle(), batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert actions == {"kept accepted": 1, "quarantined as suspect": 1, "kept quarantined (labelled)": 1}
    assert seen == [(2, 3), (3, 3)]

    suspect = reviewer.get(stranger["image_id"])
    assert suspect["status"] == "quarantined" and suspect["reason"].startswith(f"suspect: labelled '{place}'")
    assert suspect["vetting"]["model_version"] == version
    assert not bucket.blob(stranger["curated"]["path"]).exists()
    assert not db.collection("content_claims").document(f"file-{stranger['hashes']['file_sha256']['hex']}").get().exists
    assert reviewer.get(agreeing["image_id"])["vetting"]["outcome"] == "agrees"

    suggested = reviewer.get(inbox["image_id"])["vetting"]["suggestion"]
    assert suggested["action"] == "accept" and suggested["place_id"] == other[1]
    accepted = reviewer.apply_suggestion(inbox["image_id"])
    assert accepted["status"] == "accepted" and accepted["place_id"] == other[1]
    assert bucket.blob(accepted["curated"]["path"]).exists()
    rejected = reviewer.apply_suggestion(stranger["image_id"])
    assert rejected["status"] == "rejected" and "no known place" in rejected["reason"]

    assert reviewer.rescan(cache.bundle()) == {"already scored by this model": 2}


def test_inbox_and_loose_uploads_are_unlabelled():
    from placeid.config import Settings
    from placeid.ingest import StoredObject, label_from

    settings = Settings()

    def label(name: str, metadata: dict | None = None):
        return label_from(StoredObject("b", name, 1, metadata=metadata or {}), settings)

    assert label("raw/inbox/x.jpg") == (None, None, None)
    assert label("raw/x.jpg") == (None, None, None)
    assert label("raw/inbox/x.jpg", {"place_id": "petra"}) == ("petra", "metadata", None)
    assert label("raw/petra/x.jpg") == ("petra", "path", None)
    assert label("raw/inbox/../petra/x.jpg")[2].startswith("unsafe object name")


@pytest.fixture
def review_page(catalog):
    """The review page (placeid review serve's app) on a free port of 127.0.0.1, in a thread."""
    import threading

    from werkzeug.serving import make_server

    from placeid.review import Reviewer
    from placeid.review_http import create_review_app
    from tests.conftest import free_port

    port = free_port()
    server = make_server("127.0.0.1", port, create_review_app(Reviewer(), {f"127.0.0.1:{port}"}), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def test_review_page_in_headless_chromium(served, client, db, bucket, answers, review_page, browser):
    """Two suspects on the page with thumbnails and the model's suggestions; one click does as suggested (the
    mislabelled photo is accepted under the model's place, with its curated copy), one rejects the stranger."""
    import requests
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo, place = answers["sure"][0]
    other = next(p for p in ("petra", "louvre", "colosseum", "taj-mahal") if p != place)
    mislabelled = ingest(client, bucket, db, f"raw/{other}/{photo.name}", photo.read_bytes())
    stranger = ingest(client, bucket, db, f"raw/petra/{answers['unknown'][0].name}", answers["unknown"][0].read_bytes())
    assert mislabelled["status"] == stranger["status"] == "quarantined"

    browser.set_window_size(1200, 900)
    browser.get(review_page + "/")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".card")) == 2)
    cards = {c.get_attribute("data-image-id"): c for c in browser.find_elements(By.CSS_SELECTOR, ".card")}
    assert "2 photos waiting; 2 with the model's suggestion" in browser.find_element(By.ID, "summary").text
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
    assert f"relabel as {place}" in cards[mislabelled["image_id"]].find_element(By.CLASS_NAME, "suggestion").text
    assert "reject (no known place)" in cards[stranger["image_id"]].find_element(By.CLASS_NAME, "suggestion").text

    cards[mislabelled["image_id"]].find_element(By.CLASS_NAME, "apply").click()
    cards[stranger["image_id"]].find_element(By.CLASS_NAME, "reject").click()
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".outcome.done")) == 2)
    assert cards[mislabelled["image_id"]].find_element(By.CLASS_NAME, "outcome").text == f"accepted as {place}"
    accepted = db.collection("images").document(mislabelled["image_id"]).get().to_dict()
    assert accepted["status"] == "accepted" and accepted["place_id"] == place
    assert bucket.blob(accepted["curated"]["path"]).exists()
    assert db.collection("images").document(stranger["image_id"]).get().to_dict()["status"] == "rejected"

    # The API trusts no other origin and answers every error in JSON.
    record_url = f"{review_page}/api/records/{stranger['image_id']}"
    form = requests.post(f"{record_url}/reject", data={"reason": "x"}, timeout=10)
    assert form.status_code == 415 and form.json()["error"]["status"] == 415
    rebound = requests.get(f"{review_page}/api/records", headers={"Host": "attacker.example:80"}, timeout=10)
    assert rebound.status_code == 400 and "answers to" in rebound.json()["error"]["message"]
    assert requests.get(f"{review_page}/api/records/..%2Fsecrets/thumbnail", timeout=10).status_code == 404
    assert requests.post(f"{record_url}/explode", json={}, timeout=10).json()["error"]["status"] == 404
    assert requests.get(f"{review_page}/api/records?limit=many", timeout=10).status_code == 400
    huge = requests.post(f"{record_url}/reject", json={"reason": "x" * 1_000_000}, timeout=10)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"


def test_a_cropped_copy_is_caught_by_the_models_features_and_a_looser_phash(served, client, db, bucket, answers,
                                                                           world30_photos):
    """A crop of an accepted photo (10 % off each side) slips past every pHash at distance 8; the model's features
    (the served one's) together with a pHash within the looser distance catch it. Another photo of the same place
    has close features too, but no near pHash: it is accepted."""
    import io

    from PIL import Image

    photo, place = answers["sure"][0]
    original = ingest(client, bucket, db, f"raw/{place}/{photo.name}", photo.read_bytes())
    assert original["status"] == "accepted"
    stored = db.collection("near_features").document(original["image_id"]).get().to_dict()
    assert stored["model_version"] == served and len(stored["features"].to_map_value()["value"]) > 0

    image = Image.open(photo).convert("RGB")
    w, h = image.size
    cropped = io.BytesIO()
    image.crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(cropped, "JPEG", quality=90)
    copy = ingest(client, bucket, db, f"raw/{place}/cropped-{photo.name}", cropped.getvalue())
    assert copy["status"] == "near_duplicate" and copy["duplicate_of"] == original["image_id"], copy["reason"]
    assert copy["reason"].startswith("the model's features (cosine 0.")

    for other in [p for p in world30_photos[place] if p != photo][:3]:
        assert ingest(client, bucket, db, f"raw/{place}/{other.name}", other.read_bytes())["status"] == "accepted"
