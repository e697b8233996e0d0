"""The predict function as it runs: a functions-framework process (started by the local stack) answering real
HTTP, swapping models after promote and rollback, and its page driven in headless Chromium."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from placeid_cli.main import main
from placeid.registry import Registry
from tests.serving import REFRESH_S, publish, wait_for_version


def test_real_http_answers_and_hot_swaps_models(predict_server, db, bucket, small_bundle, scratch_dir,
                                                held_out_photos):
    url, server_settings = predict_server
    photo, _ = held_out_photos[0]
    data = photo.read_bytes()

    cold = requests.post(url + "/", data=data, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert cold.status_code == 503 and cold.json()["error"]["code"] == "model_unavailable"

    first = publish(db, bucket, small_bundle, scratch_dir)
    wait_for_version(url, first)
    answer = requests.post(url + "/", files={"image": (photo.name, data, "image/jpeg")}, timeout=30).json()
    assert answer["model_version"] == first
    chunked = requests.post(url + "/", data=iter([data[:1000], data[1000:]]), headers={"Content-Type": "image/jpeg"},
                            timeout=30)  # no Content-Length: Transfer-Encoding chunked
    assert chunked.status_code == 200 and chunked.json()["probabilities"] == answer["probabilities"]

    second = publish(db, bucket, small_bundle, scratch_dir, version="99990101T000000Z-mobilenet-second")
    wait_for_version(url, second)
    instances = {"instances": [{"b64": base64.b64encode(data).decode()}]}
    swapped = requests.post(url + "/v1/models/placeid:predict", json=instances, timeout=30).json()
    assert swapped["model_version"] == second
    assert swapped["predictions"][0]["scores"] == answer["probabilities"]  # same weights, new bundle

    Registry(db, bucket).rollback()
    wait_for_version(url, first)
    assert requests.post(url + "/", data=data, headers={"Content-Type": "image/jpeg"},
                         timeout=30).json()["model_version"] == first
    # Only complete, verified bundles are in the cache: no staging folder is left behind.
    cached = sorted(p.name for p in server_settings.model_cache_dir.iterdir())
    assert cached == sorted([first, second])

    # Concurrent clients all get answers from the same model.
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: requests.post(url + "/", data=data, timeout=30,
                                                          headers={"Content-Type": "image/jpeg"}), range(24)))
    assert {r.status_code for r in responses} == {200}
    assert {tuple(r.json()["probabilities"]) for r in responses} == {tuple(answer["probabilities"])}


def test_bucket_outage_keeps_the_current_model(predict_server, db, bucket, small_bundle, scratch_dir,
                                               held_out_photos):
    """A promoted bundle that cannot be fetched (files missing) never replaces the model being served."""
    url, _ = predict_server
    first = publish(db, bucket, small_bundle, scratch_dir)
    wait_for_version(url, first)
    broken = publish(db, bucket, small_bundle, scratch_dir, version="99990101T000000Z-mobilenet-broken")
    bucket.blob(f"models/{broken}/model_int8.tflite").delete()
    time.sleep(REFRESH_S * 3)
    status = requests.get(f"{url}/v1/models/placeid", timeout=10).json()
    assert status["model_version_status"][0]["version"] == first
    photo, _ = held_out_photos[0]
    answer = requests.post(url + "/", data=photo.read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model_version"] == first


@pytest.mark.slow  # headless Chromium
def test_page_in_headless_chromium(predict_server, browser, db, bucket, small_bundle, scratch_dir, held_out_photos):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = predict_server
    wait_for_version(url, publish(db, bucket, small_bundle, scratch_dir))
    # A photo the model recognises (asked over the API first), so the page must show that place's name.
    for photo, _ in held_out_photos:
        expected = requests.post(url + "/", data=photo.read_bytes(), headers={"Content-Type": "image/jpeg"},
                                 timeout=30).json()
        if not expected["unknown"]:
            break
    else:
        pytest.fail("the small model recognised none of its held-out photos")

    browser.get(url + "/")
    assert "Which place" in browser.title + browser.page_source
    browser.find_element(By.ID, "image").send_keys(str(photo))
    name = WebDriverWait(browser, 30).until(expected_conditions.visibility_of_element_located((By.ID, "place-name")))
    assert name.text == expected["place"]["name"]
    nearby = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#nearby li")]
    assert [site["name"] for site in expected["place"]["nearby"]] == [text.split(" (")[0] for text in nearby]
    assert browser.find_element(By.LINK_TEXT, "Show on the map").get_attribute("href") == expected["place"]["map_url"]

    # A file that is no image: the page shows the API's error instead of a place.
    not_an_image = scratch_dir / "notes.jpg"
    not_an_image.write_text("not a photo")
    browser.find_element(By.ID, "image").send_keys(str(not_an_image))
    error = WebDriverWait(browser, 30).until(expected_conditions.visibility_of_element_located((By.ID, "error")))
    assert "415" in error.text


def test_placeid_predict_command(predict_server, db, bucket, small_bundle, scratch_dir, held_out_photos, capsys):
    url, _ = predict_server
    wait_for_version(url, publish(db, bucket, small_bundle, scratch_dir))
    photo, _ = held_out_photos[0]
    expected = requests.post(url + "/", data=photo.read_bytes(), headers={"Content-Type": "image/jpeg"},
                             timeout=30).json()
    not_an_image = scratch_dir / "notes.jpg"
    not_an_image.write_text("not a photo")
    assert main(["predict", str(photo), str(not_an_image), "--url", url + "/"]) == 1
    out = capsys.readouterr().out
    assert (expected["place"]["name"] if expected["place"] else "unknown") in out
    assert "error 415" in out


def test_an_oversized_body_is_refused_without_reading_it(predict_server):
    """A client announcing 200 MB gets its 413 after sending 1 MB: the function never waits for (or reads) the
    rest. (gunicorn ignores the function's `Connection: close` and, on a kept-alive connection, discards what
    follows in 8 KiB reads; Cloud Run's front end refuses bodies over 32 MiB before they reach it.)"""
    import socket
    from urllib.parse import urlparse

    url, _ = predict_server
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                           b"Content-Length: 200000000\r\n\r\n" + b"\xff" * (1 << 20))
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 413"), head
    assert time.monotonic() - started < 5
