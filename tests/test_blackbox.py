"""The hostile-input corpus (tests/corpus.py) run black-box against the live functions: the predict function
under functions-framework answering real HTTP (raw body, multipart and TF-Serving JSON), and the ingest function
under functions-framework fed by the project's bridge from real OBJECT_FINALIZE notifications. Every case must
get its expected answer or record, no answer may carry a stack trace, and both servers must stay healthy (same
worker process, same answer to a real photo, bounded memory) through the whole corpus."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import requests

from placeid.local.stack import LocalStack
from tests.corpus import Case, build_cases
from tests.serving import publish, wait_for_version
from tests.test_full_path import function_stack, records, wait_for  # noqa: F401 - fixture

#: Generous: the strict memory budgets are benchmarked elsewhere. These only catch a bomb that got decoded
#: (12000 x 12000 greyscale alone is 137 MiB of pixels, four times that once converted to RGB).
MAX_PREDICT_RSS_MIB = 600
MAX_PREDICT_GROWTH_MIB = 128
STACK_TRACE = re.compile(r"Traceback|File \"/|\.py\", line \d+")


@pytest.fixture(scope="module")
def corpus(data_dir) -> list[Case]:
    images = data_dir / "world30" / "images"
    photos = [sorted(place.glob("*.jpg"))[0] for place in sorted(images.iterdir()) if place.is_dir()]
    return build_cases(photos)[0]


def process_tree(root: int) -> list[int]:
    """``root`` and every process in its session (LocalStack starts each service in a session of its own:
    functions-framework's gunicorn master and its worker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[3]) == root or int(entry.name) == root:  # fields[3]: session id
            found.append(int(entry.name))
    return sorted(found)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of one process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def _send(url: str, case: Case, how: str) -> requests.Response:
    if how == "raw":
        return requests.post(url + "/", data=case.data, headers={"Content-Type": case.content_type}, timeout=60)
    if how == "multipart":
        return requests.post(url + "/", files={"image": (case.name, case.data, case.content_type)}, timeout=60)
    body = {"instances": [{"b64": base64.b64encode(case.data).decode()}]}
    return requests.post(url + "/v1/models/placeid:predict", json=body, timeout=60)


def _outcome(response: requests.Response, how: str) -> tuple[int, str | None, list]:
    """(status, error code, scores) of an answer; checks the shape every answer must have."""
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
    assert not STACK_TRACE.search(response.text), response.text[:2000]
    body = response.json()
    if response.status_code == 200:
        scores = body["predictions"][0]["scores"] if how == "b64" else body["probabilities"]
        return 200, None, scores
    error = body["error"]
    assert error["status"] == response.status_code and error["message"], body
    return response.status_code, error["code"], []


def _recognised(url: str, held_out_photos) -> tuple[Path, dict]:
    """A held-out photo (never seen in training) the served model names correctly, and its answer."""
    for photo, place in held_out_photos:
        answer = requests.post(url + "/", data=photo.read_bytes(), headers={"Content-Type": "image/jpeg"},
                               timeout=30)
        assert answer.status_code == 200, answer.text
        if answer.json()["place"] and answer.json()["place"]["place_id"] == place:
            return photo, answer.json()
    pytest.fail("the small model names none of its held-out photos correctly")


def test_predict_server_answers_the_corpus(predict_server, corpus, db, bucket, small_bundle, scratch_dir,
                                          held_out_photos):
    url, server_settings = predict_server
    version = publish(db, bucket, small_bundle, scratch_dir)
    wait_for_version(url, version)
    photo, before = _recognised(url, held_out_photos)
    stack = LocalStack(server_settings)
    tree = process_tree(stack.pid("predict"))
    assert tree, "no functions-framework process found"
    rss_before = {pid: memory_kib(pid) for pid in tree}

    failures, scores = [], {}
    for case in corpus:
        for how in ("raw", "multipart", "b64"):
            response = _send(url, case, how)
            status, code, case_scores = _outcome(response, how)
            if (status, code) != (case.http_status, case.http_code):
                failures.append(f"{case.name} ({how}, {case.content_type}): {status} {code}, expected "
                                f"{case.http_status} {case.http_code}: {response.text[:200]}")
            if case_scores:
                scores.setdefault(case.name, []).append(case_scores)
    assert not failures, "\n".join(failures)
    for name, answers in scores.items():  # the same bytes are the same photo however they are sent
        assert len(answers) == 3 and answers[0] == answers[1] == answers[2], name

    # Still healthy: the same processes (no worker crashed and was replaced), the same answer to a real photo.
    assert process_tree(stack.pid("predict")) == tree
    after = requests.post(url + "/", data=photo.read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert after.status_code == 200 and after.json()["probabilities"] == before["probabilities"]
    assert after.json()["place"]["place_id"] == before["place"]["place_id"]
    assert requests.get(f"{url}/v1/models/placeid", timeout=10).json()["model_version_status"][0]["state"] == \
        "AVAILABLE"
    log = stack.log_file("predict").read_text(errors="replace")
    assert "Traceback" not in log and "predict failed" not in log, log[-3000:]

    rss_after = {pid: memory_kib(pid) for pid in tree}
    peak_mib = max(m["VmHWM"] for m in rss_after.values()) / 1024
    print(f"\npredict process tree {tree}: VmRSS before {[m['VmRSS'] // 1024 for m in rss_before.values()]} MiB, "
          f"after {[m['VmRSS'] // 1024 for m in rss_after.values()]} MiB; peak VmHWM before "
          f"{[m['VmHWM'] // 1024 for m in rss_before.values()]} MiB, after "
          f"{[m['VmHWM'] // 1024 for m in rss_after.values()]} MiB")
    assert peak_mib < MAX_PREDICT_RSS_MIB, f"the predict worker peaked at {peak_mib:.0f} MiB during the corpus"
    growth_mib = max(rss_after[pid]["VmHWM"] - rss_before[pid]["VmHWM"] for pid in tree) / 1024
    assert growth_mib < MAX_PREDICT_GROWTH_MIB, f"the corpus raised the predict peak RSS by {growth_mib:.0f} MiB"


def test_ingest_function_records_the_corpus(function_stack, corpus, db, bucket):  # noqa: F811
    """Uploads to fake-gcs-server -> OBJECT_FINALIZE -> bridge -> ingest under functions-framework."""
    ingest_pid = function_stack.pid("ingest")
    tree = process_tree(ingest_pid)
    for case in corpus:
        blob = bucket.blob(f"raw/eiffel-tower/{case.name}")
        blob.upload_from_string(case.data, content_type=case.content_type)
    found = wait_for(lambda: len(records(db)) >= len(corpus) and records(db), timeout_s=90)
    wait_for(lambda: all(r.get("curated", {}).get("written") for r in records(db) if r["status"] == "accepted"),
             timeout_s=30)
    by_name = {record["file_name"]: record for record in records(db)}
    assert len(found) == len(corpus) == len(by_name)

    failures = []
    for case in corpus:
        record = by_name[case.name]
        if record["status"] != case.status or (case.reason and case.reason not in (record["reason"] or "")):
            failures.append(f"{case.name}: {record['status']} ({record['reason']}), expected {case.status} "
                            f"({case.reason})")
        elif case.format and record.get("format") != case.format:
            failures.append(f"{case.name}: format {record.get('format')}, expected {case.format}")
        elif case.accepted != bool(record.get("curated", {}).get("written")):
            failures.append(f"{case.name}: curated copy {record.get('curated')}")
        elif record["reason"] and STACK_TRACE.search(record["reason"]):
            failures.append(f"{case.name}: reason carries a stack trace: {record['reason']}")
        elif case.check and case.check.startswith("orientation-"):
            orientation = int(case.check.split("-")[1])
            size = (120, 160) if orientation >= 5 else (160, 120)
            if (record["exif_orientation"], record["width"], record["height"]) != (orientation, *size):
                failures.append(f"{case.name}: orientation {record['exif_orientation']}, "
                                f"{record['width']}x{record['height']}")
    assert not failures, "\n".join(failures)
    curated = {blob.name.rsplit("/", 1)[-1] for blob in bucket.list_blobs(prefix="curated/")}
    assert len(curated) == sum(case.accepted for case in corpus)

    # Every case was settled on its first delivery by the same, still healthy worker.
    assert function_stack.pid("ingest") == ingest_pid and process_tree(ingest_pid) == tree
    log = function_stack.log_file("ingest").read_text(errors="replace")
    assert "Traceback" not in log and "transient failure" not in log, log[-3000:]
    bridge_log = function_stack.log_file("bridge").read_text(errors="replace")
    assert "redelivered" not in bridge_log, bridge_log[-3000:]
    peak = max(memory_kib(pid)["VmHWM"] for pid in tree) / 1024
    print(f"\ningest process tree {tree}: peak VmHWM {peak:.0f} MiB")
