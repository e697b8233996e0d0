"""Ingestion benchmark: all world30 photos through the full local path, then the near-duplicate index.

    python bench/ingest_bench.py [--bundle RUN_DIR]   # prints a table, saves bench/results/ingest.json

With ``--bundle``, that run is registered and promoted first, so the function vets every photo with it (the model
check, placeid.vetting); without, no model is served (photos are ingested unchecked).

Part 1 starts its own local stack (fresh ports), loads the catalog, uploads every world30 photo to
fake-gcs-server and waits until the function has recorded each one: images/second end to end, p50/p99 of
the function's own per-event time (from its structured logs), its peak RSS, and the outcome counts.
Part 2 fills ``near_index`` with 2,000 and then 20,000 synthetic 64-bit hashes and times one lookup
through the band index against a linear scan of the collection.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_seconds, free_port, peak_rss_mib, percentile, save  # noqa: E402
from placeid.catalog import bundled_catalog_path, load_catalog, read_catalog  # noqa: E402
from placeid.images import status_counts, wait_for_records  # noqa: E402
from placeid.collect import upload_folder  # noqa: E402
from placeid.config import Settings  # noqa: E402
from placeid.hashing import hamming_distance  # noqa: E402
from placeid.neardup import NearDuplicateIndex, band_keys  # noqa: E402
from placeid.local.stack import LocalStack  # noqa: E402
from placeid.registry import Registry  # noqa: E402
from placeid.store import firestore_client, storage_client  # noqa: E402

console = Console()


def bench_full_path(settings: Settings, stack: LocalStack, bundle: Path | None) -> dict:
    db = firestore_client(settings.project)
    load_catalog(db, read_catalog(bundled_catalog_path()))
    load_catalog(db, read_catalog(settings.world30_dir / "places.json"))
    model = None
    if bundle:
        registry = Registry(db, storage_client(settings.project).bucket(settings.models_bucket_name))
        model = registry.register(bundle)["version"]
        registry.promote(model, force=True)
    folder = settings.world30_dir / "images"
    expected = sum(1 for _ in folder.glob("*/*.jpg"))
    services = [name for name in stack.SERVICES if stack.pid(name)]
    cpu_before = {name: cpu_seconds(stack.pid(name)) for name in services}
    started = time.monotonic()
    upload_folder(settings, folder, workers=8)
    uploaded_s = time.monotonic() - started
    wait_for_records(settings, expected)
    elapsed = time.monotonic() - started
    # Where the machine's CPU goes, per photo: on 2 cores, 2,000 ms of CPU a second is all there is.
    cpu_ms = {name: round((cpu_seconds(stack.pid(name)) - cpu_before[name]) * 1000 / expected, 1) for name in services}
    logged = [json.loads(line) for line in stack.log_file("ingest").read_text().splitlines()
              if line.startswith("{") and '"message": "ingested"' in line]
    durations = [entry["duration_ms"] for entry in logged]
    steps = sorted({step for entry in logged for step in entry.get("steps_ms", {})})
    return {
        "model": model,
        "photos": expected,
        "end_to_end_s": round(elapsed, 1),
        "upload_s": round(uploaded_s, 1),
        "images_per_s": round(expected / elapsed, 1),
        "function_ms_p50": percentile(durations, 50),
        "function_ms_p99": percentile(durations, 99),
        # Where an event's time goes: each step's median, and its mean share of the function's time.
        "function_steps_ms_p50": {step: percentile([e["steps_ms"].get(step, 0.0) for e in logged], 50)
                                  for step in steps},
        "function_steps_share": {step: round(sum(e["steps_ms"].get(step, 0.0) for e in logged) / sum(durations), 3)
                                 for step in steps},
        "cpu_ms_per_photo": cpu_ms,
        "cpu_ms_per_photo_all": round(sum(cpu_ms.values()), 1),
        "cpu_cores": os.cpu_count(),
        "function_peak_rss_mib": peak_rss_mib(stack.pid("ingest")),
        "bridge_concurrency": settings.bridge_concurrency,
        "outcomes": dict(status_counts(settings)),
    }


def bench_index(settings: Settings, sizes=(2_000, 20_000), lookups: int = 50) -> list[dict]:
    """Lookup of one new hash through the band index vs a linear scan, at each collection size."""
    db = firestore_client(settings.project)
    index = NearDuplicateIndex(db, settings.near_dup_distance)
    baseline = db.collection("bench_linear_scan")
    rng = random.Random(42)
    hashes: list[str] = []
    rows = []
    for size in sizes:
        previous = len(hashes)
        hashes += [f"{rng.getrandbits(64):016x}" for _ in range(size - previous)]
        # Build the band documents in memory and write each once (setup, not measured).
        bands: dict[str, dict] = {}
        for number, value in enumerate(hashes):
            for key in band_keys(value, index.distance):
                bands.setdefault(key, {})[f"img{number:06d}"] = {"phash": value, "indexed_at": None}
        _write_all(db, [(index.collection.document(k), {"members": m}) for k, m in bands.items()])
        _write_all(db, [(baseline.document(f"img{n:06d}"), {"phash": hashes[n]}) for n in range(previous, size)])
        probes = [f"{rng.getrandbits(64):016x}" for _ in range(lookups)]
        index.find(probes[0])  # warm the connection
        band_times, candidates = [], []
        for probe in probes:
            t0 = time.perf_counter()
            index.find(probe)
            band_times.append((time.perf_counter() - t0) * 1000)
            candidates.append(sum(len(s.get("members") or {}) for s in db.get_all(index.probe_refs(probe)) if s.exists))
        scan_times = []
        for probe in probes[:5]:
            t0 = time.perf_counter()
            [s.id for s in baseline.select(["phash"]).stream()
             if hamming_distance(probe, s.get("phash")) <= settings.near_dup_distance]
            scan_times.append((time.perf_counter() - t0) * 1000)
        rows.append({"stored_hashes": size, "docs_read": len(index.probe_refs(probes[0])),
                     "candidates_checked_mean": round(statistics.mean(candidates), 1),
                     "band_lookup_ms_p50": round(statistics.median(band_times), 1),
                     "band_lookup_ms_p99": percentile(band_times, 99),
                     "linear_scan_ms_p50": round(statistics.median(scan_times), 1)})
    return rows


def _write_all(db, writes: list) -> None:
    for start in tqdm(range(0, len(writes), 400), desc="index fill", unit="batch"):
        batch = db.batch()
        for ref, doc in writes[start:start + 400]:
            batch.set(ref, doc)
        batch.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a run folder to serve while ingesting (the model check)")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="placeid-bench-"))
    settings = Settings.from_env(state_dir=state, firestore_port=free_port(), pubsub_port=free_port(),
                                 gcs_port=free_port(), ingest_port=free_port(), predict_port=free_port(), project="placeid-bench",
                                 model_cache_dir=state / "model-cache")
    os.environ.update(settings.as_env())
    os.environ.update(settings.emulator_env())
    stack = LocalStack(settings)
    try:
        with console.status("starting the local stack"):
            stack.up()
        full = bench_full_path(settings, stack, args.bundle)
        stack.stop("bridge")
        stack.stop("ingest")
        requests.delete(f"{settings.url(settings.firestore_port)}/emulator/v1/projects/{settings.project}"
                        "/databases/(default)/documents", timeout=30)
        index_rows = bench_index(settings)
    finally:
        stack.down()
    path = save("ingest", {"full_path": full, "near_duplicate_index": index_rows,
                           "near_dup_distance": settings.near_dup_distance})
    table = Table(title="ingest: world30 through the full local path")
    table.add_column("metric")
    table.add_column("value")
    for key, value in full.items():
        table.add_row(key, str(value))
    console.print(table)
    table = Table(title=f"near-duplicate lookup (d = {settings.near_dup_distance})")
    for column in index_rows[0]:
        table.add_column(column)
    for row in index_rows:
        table.add_row(*[str(v) for v in row.values()])
    console.print(table)
    console.print(f"saved {path}")


if __name__ == "__main__":
    main()
