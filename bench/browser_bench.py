"""The page's offline mode in headless Chromium: what the first visit downloads, how soon the page answers with the
network cut, per-photo latency on the device, and agreement with the edge package.

    python bench/browser_bench.py --bundle RUN_DIR [--runs 3]   # a table; saves bench/results/browser.json

The local stack's emulators and the predict function (functions-framework) serve ``RUN_DIR`` (a run from before
the batch fix is served from a copy whose model has its batch fixed to 1, training.export.with_batch_of_one: the
weights are the same). Each run is a fresh browser profile:

- first visit: ``/`` until the page's device copy is ready (the page, its scripts, LiteRT.js, the bundle). Bytes:
  each URL the page's resource timing lists, asked again with ``Accept-Encoding: gzip`` and counted as sent
  (headers included; the timing itself cannot see through the service worker); the service worker's own requests
  (sw.js, 2 KB, and its precache of the page's five small files, revalidated: 304s) are not counted;
- offline: the function stops, the browser goes offline (DevTools), the page reloads: time from the reload to the
  first answer for a 320-px photo (the page from the service worker, the model compiled from Cache Storage);
- per photo: the page's own timing (``timing_ms.total``: decode, preprocess, inference, mirror pass, rule) for a
  12 MP JPEG (4000x3000, quality 90, as bench/serving_bench.py makes it) and a 320-px world30 photo; median of
  ``--repeats``;
- agreement with the edge package (Python, same bundle) on 50 world30 photos, 10 negatives and 20 camera originals.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import free_port, save  # noqa: E402
from bench.serving_bench import make_photos  # noqa: E402
from placeid.catalog import bundled_catalog_path, load_catalog, read_catalog  # noqa: E402
from placeid.config import Settings  # noqa: E402
from placeid.local.browser import classify_in_page, headless_chromium, set_offline, wait_ready  # noqa: E402
from placeid.local.stack import LocalStack  # noqa: E402
from placeid.registry import Registry  # noqa: E402
from placeid.store import firestore_client, storage_client  # noqa: E402
from placeid_edge.bundle import Bundle, bundle_files  # noqa: E402

console = Console()


def servable_copy(run_dir: Path, folder: Path) -> Path:
    """``run_dir``'s bundle files, its model's batch fixed to 1 when it is not (older runs)."""
    import hashlib

    from training.export import with_batch_of_one

    manifest = json.loads((run_dir / "manifest.json").read_text())
    for name in bundle_files(manifest)[1:]:
        shutil.copy(run_dir / name, folder / name)
    model = (folder / "model_int8.tflite").read_bytes()
    fixed = with_batch_of_one(model)
    if fixed != model:
        console.print("the model's batch was dynamic: serving a copy with it fixed to 1 (same weights)")
        (folder / "model_int8.tflite").write_bytes(fixed)
    manifest["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
                         for name in bundle_files(manifest)[1:]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def wire_bytes(url: str) -> int:
    """The bytes a browser receives for ``url`` (the body as sent, gzipped where the server gzips, plus headers):
    asked again here, since the page's resource timing cannot see through its service worker."""
    with requests.get(url, headers={"Accept-Encoding": "gzip, deflate, br"}, stream=True, timeout=60) as response:
        body = response.raw.read(decode_content=False)
        return len(body) + sum(len(k) + len(v) + 4 for k, v in response.headers.items())


def one_run(url: str, stack: LocalStack, photos: dict[str, bytes], repeats: int) -> dict:
    driver = headless_chromium()
    try:
        started = time.perf_counter()
        driver.get(url + "/")
        state = wait_ready(driver)
        first_visit_s = time.perf_counter() - started
        assert state["mode"] == "device", state
        loaded = driver.execute_script(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
            ".map(e => e.name);")
        transferred = [(name, wire_bytes(name)) for name in loaded]
        latency = {}
        for name in ("12mp", "320px"):
            answers = [classify_in_page(driver, photos[name]) for _ in range(repeats)]
            latency[name] = round(statistics.median(a["timing_ms"]["total"] for a in answers), 1)
        stack.stop("predict")
        set_offline(driver)
        started = time.perf_counter()
        driver.refresh()
        assert wait_ready(driver)["mode"] == "device"
        answer = classify_in_page(driver, photos["320px"])
        offline_s = time.perf_counter() - started
        assert answer.get("answered") == "device", answer
    finally:
        driver.quit()
    stack.start("predict")
    by_kind: dict[str, int] = {}
    for name, size in transferred:
        path = name.split("?")[0].removeprefix(url)
        kind = ("model bundle" if "/bundle" in path else "LiteRT.js" if "/vendor/" in path else "page")
        by_kind[kind] = by_kind.get(kind, 0) + size
    return {"first_visit_s": round(first_visit_s, 2), "first_load_bytes": sum(by_kind.values()),
            "first_load_bytes_by_kind": by_kind, "offline_reload_to_first_answer_s": round(offline_s, 2),
            "per_photo_ms": latency}


def agreement(url: str, bundle: Bundle, settings: Settings) -> dict:
    """The page (offline copy) against the edge package on the same photos: top-1, unknown, probabilities."""

    world30 = sorted((settings.world30_dir / "images").glob("*/*.jpg"))[::38][:50]
    negatives = sorted((settings.data_dir / "negatives" / "images").glob("*/*.jpg"))[::7][:10]
    originals = sorted(p for p in (settings.data_dir / "world30-originals").glob("*/*")
                       if p.suffix.lower() in (".jpg", ".jpeg"))[::9][:20]
    driver = headless_chromium()
    rows = {}
    try:
        driver.get(url + "/")
        wait_ready(driver)
        for group, paths in (("world30", world30), ("negatives", negatives), ("camera originals", originals)):
            top1 = unknown = 0
            diffs = []
            for path in paths:
                mine, reference = classify_in_page(driver, path.read_bytes()), bundle.predict(path).to_json()
                top1 += mine["top_k"][0]["place_id"] == reference["top_k"][0]["place_id"]
                unknown += mine["unknown"] == reference["unknown"]
                diffs.append(float(np.abs(np.array(mine["probabilities"]) - reference["probabilities"]).max()))
            rows[group] = {"photos": len(paths), "same_top1": top1, "same_unknown": unknown,
                           "max_probability_difference": round(max(diffs), 4),
                           "p95_probability_difference": round(float(np.percentile(diffs, 95)), 4)}
    finally:
        driver.quit()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="a training run folder to serve")
    parser.add_argument("--runs", type=int, default=3, help="fresh browser profiles (first visits)")
    parser.add_argument("--repeats", type=int, default=7, help="answers per photo size in each run")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="placeid-bench-"))
    settings = Settings.from_env(state_dir=state, firestore_port=free_port(), pubsub_port=free_port(),
                                 gcs_port=free_port(), ingest_port=free_port(), predict_port=free_port(),
                                 project="placeid-bench", model_cache_dir=state / "model-cache")
    os.environ.update(settings.as_env())
    os.environ.update(settings.emulator_env())
    stack = LocalStack(settings)
    photos = make_photos(settings, state)
    try:
        with console.status("starting the emulators and the predict function"):
            stack.up(("firestore", "pubsub", "gcs"))
            db = firestore_client(settings.project)
            load_catalog(db, read_catalog(bundled_catalog_path()))
            load_catalog(db, read_catalog(settings.world30_dir / "places.json"))
            copy = servable_copy(args.bundle, Path(tempfile.mkdtemp(prefix="bundle-", dir=state)))
            registry = Registry(db, storage_client(settings.project).bucket(settings.models_bucket_name))
            version = registry.register(copy)["version"]
            registry.promote(version, force=True)
            stack.start("predict")
        url = settings.url(settings.predict_port)
        runs = [one_run(url, stack, photos, args.repeats) for _ in range(args.runs)]
        agree = agreement(url, Bundle.load(copy), settings)
    finally:
        stack.down()

    def spread(key: str, inner: str | None = None) -> dict:
        values = [run[key][inner] if inner else run[key] for run in runs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    results = {"model": version, "input_size": json.loads((copy / "manifest.json").read_text())["input_size"],
               "runs": runs, "first_load_bytes": spread("first_load_bytes"),
               "first_visit_s": spread("first_visit_s"),
               "offline_reload_to_first_answer_s": spread("offline_reload_to_first_answer_s"),
               "per_photo_ms_12mp": spread("per_photo_ms", "12mp"),
               "per_photo_ms_320px": spread("per_photo_ms", "320px"),
               "agreement_with_edge_package": agree}
    path = save("browser", results)
    table = Table(title=f"the page offline, headless Chromium ({args.runs} fresh profiles; median (min..max))")
    table.add_column("metric")
    table.add_column("value")
    for key in ("first_load_bytes", "first_visit_s", "offline_reload_to_first_answer_s", "per_photo_ms_12mp",
                "per_photo_ms_320px"):
        value = results[key]
        table.add_row(key, f"{value['median']} ({value['min']}..{value['max']})")
    for group, row in agree.items():
        table.add_row(f"agreement, {group}", json.dumps(row))
    console.print(table)
    console.print(f"saved {path}")


if __name__ == "__main__":
    main()
