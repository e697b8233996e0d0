"""The predict page offline: it keeps the served bundle, loads from its service worker with the function gone and
the network cut, recognises photos with LiteRT.js as the edge package does, and updates its copy after a promote.
Place names in the reader's language, in the page and the API. Headless Chromium against the real function."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from placeid.config import REPO_ROOT
from placeid.local.stack import LocalStack
from placeid_edge.bundle import Bundle
from placeid.local.browser import classify_in_page, headless_chromium, set_offline, wait_ready
from tests.serving import publish, wait_for_version

pytestmark = pytest.mark.slow  # headless Chromium, a trained model

#: Where the page's screenshots are left (390x844, a phone; 1200x900, a laptop).
ARTIFACTS = REPO_ROOT / "build" / "test-artifacts"
#: The Korean names given to the small bundle's places (world30's catalog has English only).
KOREAN = "(한국어)"


def bundle_with(run: Path, folder: Path, replaced: dict[str, bytes]) -> Path:
    """A copy of the bundle in ``run`` with the files in ``replaced`` (name -> content), its manifest's sha256 of
    each updated."""
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("saved_model", "tensorboard"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {name: digest for name, digest in manifest["files"].items() if (folder / name).exists()}
    for name, data in replaced.items():
        (folder / name).write_bytes(data)
        manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def korean_bundle(small_bundle, tmp_path_factory) -> Path:
    """The small bundle with a Korean name for each place and nearby site."""
    places = with_korean_names(json.loads((small_bundle / "places.json").read_text()))
    return bundle_with(small_bundle, tmp_path_factory.mktemp("korean") / "run",
                       {"places.json": json.dumps(places).encode()})


@pytest.fixture(scope="module")
def answers(korean_bundle, held_out_photos, data_dir):
    """The edge package's answers (the reference) for a recognised held-out photo and a negative."""
    bundle = Bundle.load(korean_bundle)
    known = next(((photo, answer) for photo, label in held_out_photos
                  if not (answer := bundle.predict(photo).to_json())["unknown"] and answer["place"]["place_id"] == label),
                 None)
    assert known, "the small model recognised none of its held-out photos"
    negatives = sorted((data_dir / "negatives" / "images").glob("*/*.jpg"))
    unknown = next(((photo, answer) for photo in negatives if (answer := bundle.predict(photo).to_json())["unknown"]),
                   None)
    assert unknown, "the small model answered a known place for every negative"
    return {"known": known, "unknown": unknown}


def pick(driver, photo: Path, shows: str) -> None:
    """Choose a photo with the file input and wait for the element with id ``shows``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "image").send_keys(str(photo))
    WebDriverWait(driver, 30).until(expected_conditions.visibility_of_element_located((By.ID, shows)))


def boxes(driver) -> dict:
    return driver.execute_script(
        "const r = id => { const b = document.querySelector(id).getBoundingClientRect(); "
        "return {top: b.top, bottom: b.bottom, left: b.left, right: b.right}; };"
        "return {subtitle: r('header p'), drop: r('#drop'), photo: r('#photo'), result: r('#result'), "
        "width: document.documentElement.scrollWidth, viewport: window.innerWidth};")


def test_page_recognises_photos_offline_as_the_edge_package_does(predict_server, browser, db, bucket, korean_bundle,
                                                                 scratch_dir, answers, world30_photos, data_dir):
    from selenium.webdriver.common.by import By

    url, server_settings = predict_server
    version = publish(db, bucket, korean_bundle, scratch_dir)
    wait_for_version(url, version)
    described = requests.get(f"{url}/v1/models/placeid/bundle", timeout=10).json()
    assert described["version"] == version and described["files"]["model"] == "model_int8.tflite"

    browser.set_window_size(1200, 900)
    browser.get(url + "/")
    first = wait_ready(browser)
    assert first["mode"] == "device" and first["version"] == version, first
    assert "Ready offline" in first["status"]

    # The network goes: the function stops and the browser is offline. The page loads from its service worker.
    LocalStack(server_settings).stop("predict")
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/", timeout=5)
    set_offline(browser)
    browser.refresh()
    again = wait_ready(browser)
    assert again["mode"] == "device" and again["version"] == version and again["status"].startswith("Offline"), again

    # A real photo, picked: the right place and its nearby sites, answered on this device; no map (offline).
    photo, expected = answers["known"]
    pick(browser, photo, "place-name")
    assert browser.find_element(By.ID, "place-name").text == expected["place"]["name"]
    nearby = [item.text.split(" (")[0] for item in browser.find_elements(By.CSS_SELECTOR, "#nearby li")]
    assert nearby == [site["name"] for site in expected["place"]["nearby"]] and nearby
    assert browser.find_element(By.ID, "answered").text == "answered on this device"
    assert browser.find_element(By.LINK_TEXT, "Show on the map").get_attribute("href") == expected["place"]["map_url"]
    assert not browser.find_elements(By.ID, "map")
    assert version in browser.find_element(By.ID, "result").text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    layout = {}
    for width, height in ((1200, 900), (390, 844)):
        browser.set_window_size(width, height)
        browser.save_screenshot(str(ARTIFACTS / f"offline-page-{width}x{height}.png"))
        layout[width] = boxes(browser)
    for width, box in layout.items():  # nothing overlaps, nothing runs off a phone's screen
        assert box["subtitle"]["bottom"] <= box["drop"]["top"], (width, box)
        assert box["drop"]["bottom"] <= box["photo"]["top"] <= box["photo"]["bottom"] <= box["result"]["top"], (width, box)
        assert box["width"] <= box["viewport"], (width, box)

    # A photo with no landmark: unknown, as the edge package says.
    pick(browser, answers["unknown"][0], "unknown")

    # Parity with the edge package on 50 world30 photos and 10 negatives, offline.
    bundle = Bundle.load(korean_bundle)
    photos = [p for place in sorted(world30_photos) for p in world30_photos[place][:2]][:50]
    photos += sorted((data_dir / "negatives" / "images").glob("*/*.jpg"))[::7][:10]
    same_top1 = same_unknown = 0
    worst = 0.0
    for path in photos:
        mine, reference = classify_in_page(browser, path), bundle.predict(path).to_json()
        assert "error" not in mine, (path, mine)
        assert mine["answered"] == "device" and mine["model_version"] == version
        same_top1 += mine["top_k"][0]["place_id"] == reference["top_k"][0]["place_id"]
        same_unknown += mine["unknown"] == reference["unknown"]
        worst = max(worst, float(np.abs(np.array(mine["probabilities"]) - reference["probabilities"]).max()))
    assert same_top1 >= 0.99 * len(photos) and same_unknown == len(photos), (same_top1, same_unknown, len(photos))
    assert worst <= 0.02, worst

    # Back online after a promote: the page replaces its copy with the new version and drops the old one.
    LocalStack(server_settings).start("predict")
    second = publish(db, bucket, korean_bundle, scratch_dir, version="99990101T000000Z-efficientnet-second")
    wait_for_version(url, second)
    set_offline(browser, False)
    browser.refresh()
    updated = wait_ready(browser)
    assert updated["mode"] == "device" and updated["version"] == second, updated
    kept = browser.execute_async_script(
        "const done = arguments[0]; caches.open('placeid-bundle').then(c => c.keys())"
        ".then(keys => done(keys.map(k => k.url)))")
    assert kept and all("/bundle" in u for u in kept)
    assert {u.split("v=")[1] for u in kept if "v=" in u} == {second}

    # A promote to a model the browser cannot run (a dynamic batch, as exported before 2026-11-30): the page keeps
    # answering with the copy it has, and says why it could not keep the new one.
    from training.export import with_batch

    dynamic = with_batch((korean_bundle / "model_int8.tflite").read_bytes(), -1)
    third = publish(db, bucket, bundle_with(korean_bundle, scratch_dir / "dynamic", {"model_int8.tflite": dynamic}),
                    scratch_dir, version="99990102T000000Z-efficientnet-dynamic")
    wait_for_version(url, third)
    browser.refresh()
    stuck = wait_ready(browser)
    assert stuck["mode"] == "device" and stuck["version"] == second, stuck
    assert "could not be kept" in stuck["status"], stuck
    assert classify_in_page(browser, photo)["model_version"] == second


def with_korean_names(entries: list[dict]) -> list[dict]:
    """Catalog entries (and their nearby sites) given a Korean name each, as :data:`KOREAN` marks it."""
    for entry in entries + [site for place in entries for site in place.get("nearby", [])]:
        entry["names"] = {"en": entry["name"], "ko": f"{entry['name']} {KOREAN}"}
    return entries


def test_place_names_in_the_readers_language(predict_server, db, bucket, korean_bundle, scratch_dir, answers,
                                             data_dir):
    from placeid.catalog import load_catalog, read_catalog

    url, _ = predict_server
    load_catalog(db, with_korean_names(read_catalog(data_dir / "world30" / "places.json")))  # what the API reads
    wait_for_version(url, publish(db, bucket, korean_bundle, scratch_dir))
    photo, expected = answers["known"]
    english = expected["place"]["name"]
    korean = f"{english} {KOREAN}"

    def ask(query: str = "", **headers) -> requests.Response:
        return requests.post(f"{url}/{query}", data=photo.read_bytes(), timeout=30,
                             headers={"Content-Type": "image/jpeg", **headers})

    by_query = ask("?lang=ko").json()
    assert by_query["place"]["name"] == korean and by_query["top_k"][0]["name"] == korean
    assert all(site["name"].endswith(KOREAN) for site in by_query["place"]["nearby"])
    assert ask(**{"Accept-Language": "ko-KR,ko;q=0.9,en;q=0.5"}).json()["place"]["name"] == korean
    assert ask("?lang=fr").json()["place"]["name"] == english  # no French name: English
    assert ask().json()["place"]["name"] == english
    refused = ask("?lang=%3Cscript%3E")
    assert refused.status_code == 400 and "language tag" in refused.json()["error"]["message"]

    # The page, in a browser whose language is Korean, answering on the device.
    driver = headless_chromium("ko,en")
    try:
        driver.get(url + "/")
        assert wait_ready(driver)["mode"] == "device"
        pick(driver, photo, "place-name")
        from selenium.webdriver.common.by import By

        assert driver.find_element(By.ID, "place-name").text == korean
        nearby = driver.find_elements(By.CSS_SELECTOR, "#nearby li")
        assert nearby and all(KOREAN in item.text for item in nearby)
    finally:
        driver.quit()


def test_offline_files_are_fixed_names_of_the_served_version(predict_server, db, bucket, korean_bundle, scratch_dir):
    url, _ = predict_server
    version = publish(db, bucket, korean_bundle, scratch_dir)
    wait_for_version(url, version)
    described = requests.get(f"{url}/v1/models/placeid/bundle", timeout=10).json()
    model = requests.get(f"{url}/v1/models/placeid/bundle/model_int8.tflite", params={"v": version}, timeout=10)
    assert model.status_code == 200 and "immutable" in model.headers["Cache-Control"]
    assert hashlib.sha256(model.content).hexdigest() == described["manifest"]["files"]["model_int8.tflite"]
    assert described["quantization"]["scores"] and described["quantization"]["features"]
    stale = requests.get(f"{url}/v1/models/placeid/bundle/model_int8.tflite", params={"v": "old"}, timeout=10)
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "version_changed"
    for name in ("manifest.json", "split.json", "..%2Fmanifest.json", "%2Fetc%2Fpasswd"):
        refused = requests.get(f"{url}/v1/models/placeid/bundle/{name}", params={"v": version}, timeout=10)
        assert refused.status_code == 404 and refused.headers["Content-Type"] == "application/json", name
    runtime = requests.get(f"{url}/assets/vendor/litert/litert_wasm_internal.wasm", timeout=30)
    assert runtime.status_code == 200 and runtime.headers["Content-Type"] == "application/wasm"
    assert runtime.content[:4] == b"\0asm" and runtime.headers["Content-Encoding"] == "gzip"  # 9.4 MB sent as 2.8
    assert int(runtime.headers["Content-Length"]) < len(runtime.content) / 3
    plain = requests.get(f"{url}/assets/vendor/litert/litert_wasm_internal.wasm", timeout=30,
                         headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and plain.content == runtime.content
    assert requests.get(f"{url}/assets/vendor/litert/../offline.js", timeout=10).status_code == 404
    page = requests.get(url + "/", timeout=10)
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval' 'sha256-" in policy and "connect-src 'self'" in policy
    assert requests.get(url + "/sw.js", timeout=10).headers["Content-Type"].startswith("text/javascript")
