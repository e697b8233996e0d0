"""Memory and latency budgets under hostile and large inputs (the "Field-ready II" review, finding 4).

    python bench/hostile_bench.py [--run RUN_DIR] [--seconds 30] [--requests 100] [--events 12]

It starts its own Firestore/Pub/Sub/GCS emulators, loads the catalog, registers and promotes RUN_DIR (default:
the newest run under .placeid/runs; a 96-px test bundle is enough: memory is the decode's, not the model's), and
measures, each in a fresh predict process (functions-framework, as the local stack starts it, default settings):

* ``predict.normal``: 8 clients sending real photos (the serving benchmark's 12 MP JPEGs and 320-px photo) for
  ``seconds``: answers, errors, peak RSS;
* ``predict.hostile``: 8 clients sending hostile images for ``seconds`` (a PNG bomb above the pixel limit,
  40 MP one-colour RGBA and palette PNGs within it, 16-bit PNGs of 9 MP and 40 MP, a 40 MP photo JPEG, a rotated
  40 MP JPEG, truncated files): statuses per image, peak RSS, then a real photo, which must get the answer the
  bundle gives in-process;
* ``predict.latency_12mp_{2cpu,1cpu}``: the serving benchmark's sequential 12 MP p50/p99, the server on every
  CPU, then pinned to one (``taskset -c 0``, its whole process tree);
* ``ingest``: one process running the ingest function's handler with ``concurrency`` (4, infra's
  ``ingest.concurrency``) events in flight, over the largest photos its limits allow (:func:`ingest_images`:
  40 MP JPEGs up to the 20 MB object limit, the largest PNGs its decode budget admits, a 40 MP RGBA PNG it
  must refuse): peak RSS (VmHWM) and outcomes; the same for 12 MP photos.

Prints a table and saves bench/results/hostile.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests
from PIL import Image, ImageOps
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import RESULTS, peak_rss_mib, percentile, save  # noqa: E402
from bench.serving_bench import make_photos, newest_run, start_and_time, start_emulators, stop  # noqa: E402
from placeid.catalog import bundled_catalog_path, load_catalog, read_catalog  # noqa: E402
from placeid.config import REPO_ROOT, Settings  # noqa: E402
from placeid.registry import Registry  # noqa: E402
from placeid.local.stack import function_argv  # noqa: E402
from placeid.store import ensure_bucket, firestore_client  # noqa: E402
from placeid_edge.bundle import Bundle  # noqa: E402

console = Console()
CLIENTS = 8
BUDGETS_MIB = {"predict_hostile": 300, "predict_normal": 200, "ingest": 250}
PLACE = "colosseum"


# -- inputs ----------------------------------------------------------------------------------------------------
def _png(image: Image.Image, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **params)
    return out.getvalue()


def _jpeg_at_most(image: Image.Image, limit: int, exif: bytes | None = None) -> bytes:
    """The best-quality JPEG of ``image`` no larger than ``limit`` bytes."""
    for quality in (100, 98, 95, 92, 90, 85, 80, 70):
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality, **({"exif": exif} if exif else {}))
        if out.tell() <= limit:
            return out.getvalue()
    raise RuntimeError("cannot fit the JPEG")


def _photo_40mp(settings: Settings, index: int = -1, noise: int = 0) -> Image.Image:
    """A 40 MP (7300x5475) photo: a world30 original upscaled (``noise``: grain, for more bytes to decode)."""
    originals = sorted((settings.data_dir / "world30-originals").glob("*/*.jp*g"), key=lambda p: p.stat().st_size)
    image = ImageOps.exif_transpose(Image.open(originals[index])).convert("RGB").resize((7300, 5475),
                                                                                        Image.Resampling.BICUBIC)
    if noise:
        grain = np.random.default_rng(0).integers(-noise, noise + 1, (5475, 7300, 1), dtype=np.int16)
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8))
    return image


def hostile_images(settings: Settings, photo_40mp: Image.Image, request_limit: int) -> dict[str, bytes]:
    """Hostile images for predict, each within ``request_limit`` bytes."""
    width, height = photo_40mp.size
    grey = np.asarray(photo_40mp.convert("L").resize((3464, 2598)), dtype=np.uint16)
    rotated = Image.Exif()
    rotated[0x0112] = 6
    jpeg_40 = _jpeg_at_most(photo_40mp, request_limit)
    gradient = np.add.outer(np.arange(height, dtype=np.uint32) * 7, np.arange(width, dtype=np.uint32) * 5)
    images = {
        "bomb_144mp.png": _png(Image.new("1", (12_000, 12_000))),
        "flat_rgba_40mp.png": _png(Image.new("RGBA", (width, height), (200, 30, 30, 128))),
        "palette_alpha_40mp.png": _png(Image.new("P", (width, height), 3), transparency=3),
        "grey16_9mp.png": _png(Image.fromarray(grey * 257 + 128)),
        "grey16_40mp.png": _png(Image.fromarray((gradient % 65536).astype(np.uint16))),
        "photo_40mp.jpg": jpeg_40,
        "rotated_40mp.jpg": _jpeg_at_most(photo_40mp, request_limit, exif=rotated.tobytes()),
        "truncated_40mp.jpg": jpeg_40[: len(jpeg_40) * 2 // 3],
        "truncated_grey16.png": _png(Image.fromarray(grey * 257))[:3_000_000],
    }
    for name, data in images.items():
        assert len(data) <= request_limit, (name, len(data))
    return images


def ingest_images(settings: Settings, photo_40mp: Image.Image) -> dict[str, bytes]:
    """The largest photos ingest's limits allow, each within the object limit: JPEGs of 40 MP (decoded at a
    working size), the largest PNGs its decode budget admits in 4 bytes per pixel (19.5 MP) and at 16 bits
    (27.9 MP), and a 40 MP RGBA PNG, which it must refuse from its header."""
    grainy = _photo_40mp(settings, -2, noise=6)
    nearest = Image.Resampling.NEAREST  # upscaled pixel blocks: real photo content that PNG compresses well
    images = {"photo_40mp.jpg": _jpeg_at_most(photo_40mp, settings.max_object_bytes),
              "grain_40mp.jpg": _jpeg_at_most(grainy, settings.max_object_bytes),
              "rgb_19mp.png": _png(photo_40mp.resize((1275, 956)).resize((5100, 3825), nearest), compress_level=9),
              "grey16_28mp.png": _png(Image.fromarray(np.asarray(
                  photo_40mp.convert("L").resize((1525, 1144)).resize((6100, 4575), nearest), dtype=np.uint16) * 257),
                  compress_level=9),
              "flat_rgba_40mp.png": _png(Image.new("RGBA", photo_40mp.size, (200, 30, 30, 128)))}
    for name, data in images.items():
        assert len(data) <= settings.max_object_bytes, (name, len(data))
    return images


# -- predict ---------------------------------------------------------------------------------------------------
def post(session: requests.Session, url: str, data: bytes) -> requests.Response:
    return session.post(url, data=data, headers={"Content-Type": "application/octet-stream"}, timeout=120)


def traffic(url: str, images: dict[str, bytes], seconds: float) -> dict:
    """``CLIENTS`` threads posting ``images`` round robin for ``seconds``; statuses per image."""
    statuses: dict[str, Counter] = {name: Counter() for name in images}
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    names = list(images)

    def client(offset: int) -> None:
        session = requests.Session()
        index = offset
        while time.perf_counter() < deadline:
            name = names[index % len(names)]
            index += 1
            try:
                status = str(post(session, url, images[name]).status_code)
            except requests.RequestException as exc:
                status = type(exc).__name__
                session = requests.Session()
            with lock:
                statuses[name][status] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {name: dict(counts) for name, counts in statuses.items()}


def latency(url: str, photo: bytes, count: int) -> dict:
    session = requests.Session()
    for _ in range(10):
        post(session, url, photo).raise_for_status()
    times = []
    for _ in range(count):
        begin = time.perf_counter()
        post(session, url, photo).raise_for_status()
        times.append((time.perf_counter() - begin) * 1000)
    return {"p50_ms": round(statistics.median(times), 1), "p99_ms": percentile(times, 99), "requests": count}


def bench_predict(settings: Settings, env: dict, run_dir: Path, photos: dict[str, bytes], hostile: dict[str, bytes],
                  args, logs: Path) -> dict:
    url = settings.url(settings.predict_port) + "/"
    argv = function_argv("predict", settings.host, settings.predict_port)
    expected = Bundle.load(run_dir).predict(photos["12mp"]).to_json()
    result = {}

    process, _ = start_and_time(argv, env, url, photos["320px"], logs / "predict.log")
    try:
        statuses = traffic(url, {k: photos[k] for k in ("12mp", "12mp_camera", "320px")}, args.seconds)
        result["normal"] = {"statuses": statuses, "peak_rss_mib": peak_rss_mib(process.pid)}
    finally:
        stop(process)
    console.print(f"predict normal: peak {result['normal']['peak_rss_mib']} MiB")

    process, _ = start_and_time(argv, env, url, photos["320px"], logs / "predict.log")
    try:
        statuses = traffic(url, hostile, args.seconds)
        peak = peak_rss_mib(process.pid)
        answer = post(requests.Session(), url, photos["12mp"])
        body = answer.json() if answer.status_code == 200 else {}
        correct = (answer.status_code == 200 and body.get("top_k", [{}])[0].get("place_id")
                   == expected["top_k"][0]["place_id"]
                   and abs(body["top_k"][0]["probability"] - expected["top_k"][0]["probability"]) < 1e-4)
        result["hostile"] = {"statuses": statuses, "peak_rss_mib": peak,
                             "after": {"status": answer.status_code, "correct": bool(correct),
                                       "place_id": (body.get("top_k") or [{}])[0].get("place_id")}}
    finally:
        stop(process)
    console.print(f"predict hostile: peak {result['hostile']['peak_rss_mib']} MiB, after: {result['hostile']['after']}")

    for label, prefix in (("2cpu", []), ("1cpu", ["taskset", "-c", "0"])):
        process, _ = start_and_time(prefix + argv, env, url, photos["320px"], logs / "predict.log")
        try:
            result[f"latency_12mp_{label}"] = latency(url, photos["12mp"], args.requests)
            result[f"latency_12mp_camera_{label}"] = latency(url, photos["12mp_camera"], args.requests)
        finally:
            stop(process)
        console.print(f"predict latency {label}: {result[f'latency_12mp_{label}']}")
    return result


# -- ingest ----------------------------------------------------------------------------------------------------
INGEST_PROBE = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from placeid.ingest import FINALIZED_EVENT_TYPE, Ingestor
from placeid_edge.imaging import body_budget, decode_budget
events, concurrency = json.loads(sys.argv[1]), int(sys.argv[2])
def hwm():  # VmHWM: this process image's peak (ru_maxrss would carry the parent's across fork and exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
ingestor = Ingestor()
base = hwm()
now = datetime.now(timezone.utc).isoformat()
began = time.perf_counter()
def handle(data):
    try:
        return ingestor.handle_event(FINALIZED_EVENT_TYPE, data, now)
    except Exception as exc:  # a transient failure: the platform would redeliver the event
        return {"file_name": data["name"].rsplit("/", 1)[-1], "status": "retried", "reason": str(exc)[:200]}
with ThreadPoolExecutor(concurrency) as pool:
    records = list(pool.map(handle, events))
print(json.dumps({"base_rss_mib": round(base, 1),
                  "peak_rss_mib": round(hwm(), 1),
                  "budget_mib": round(decode_budget.limit_bytes / 2**20, 1),
                  "budget_peak_reserved_mib": round(decode_budget.peak / 2**20, 1),
                  "body_budget_mib": round(body_budget.limit_bytes / 2**20, 1),
                  "body_budget_peak_reserved_mib": round(body_budget.peak / 2**20, 1),
                  "seconds": round(time.perf_counter() - began, 1),
                  "outcomes": [[r["file_name"], r["status"], r["reason"], (r.get("vetting") or {}).get("outcome")]
                               for r in records]}))
"""


def bench_ingest(settings: Settings, env: dict, files: dict[str, bytes], count: int, concurrency: int) -> dict:
    """Upload ``count`` objects cycling over ``files`` and ingest them in one process, ``concurrency`` at once."""
    bucket = ensure_bucket(settings, settings.bucket)
    events = []
    names = list(files)
    for index in range(count):
        name = names[index % len(names)]
        blob = bucket.blob(f"{settings.raw_prefix}{PLACE}/{index:03d}-{name}")
        blob.upload_from_string(files[name], content_type="application/octet-stream")
        events.append({"bucket": settings.bucket, "name": blob.name, "generation": blob.generation,
                       "size": blob.size, "metadata": {}})
    done = subprocess.run([sys.executable, "-c", INGEST_PROBE, json.dumps(events), str(concurrency)], env=env,
                          capture_output=True, text=True, timeout=1800, cwd=str(REPO_ROOT))
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["files"] = {name: len(data) for name, data in files.items()}
    result["concurrency"] = concurrency
    result["statuses"] = dict(Counter(status for _, status, *_ in result["outcomes"]))
    result["vetting"] = dict(Counter(str(outcome) for *_, outcome in result["outcomes"]))
    return result


def ingest_concurrency() -> int:
    text = (REPO_ROOT / "infra" / "variables.tf").read_text()
    block = text[text.index('variable "ingest"'):]
    block = block[block.index("default"):]
    return int(block.split("concurrency", 1)[1].split("=", 1)[1].split()[0])


# -- main ------------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="training run folder (default: the newest under .placeid/runs)")
    parser.add_argument("--seconds", type=float, default=30.0, help="each 8-client traffic run")
    parser.add_argument("--requests", type=int, default=100, help="sequential requests per latency measurement")
    parser.add_argument("--events", type=int, default=12, help="events per ingest run")
    parser.add_argument("--only", choices=("predict", "ingest"), help="run one half")
    args = parser.parse_args()
    run_dir = args.run or newest_run()
    manifest = json.loads((run_dir / "manifest.json").read_text())

    work = Path(tempfile.mkdtemp(prefix="placeid-hostile-bench-"))
    settings, stack = start_emulators(work)
    results: dict = {"model": {"version": manifest["version"], "input_size": manifest["input_size"]},
                     "clients": CLIENTS}
    try:
        db = firestore_client(settings.project)
        load_catalog(db, read_catalog(bundled_catalog_path()))
        load_catalog(db, read_catalog(settings.world30_dir / "places.json"))
        env = {**os.environ, **settings.as_env(), **settings.emulator_env(), "PYTHONPATH": str(REPO_ROOT),
               "TF_CPP_MIN_LOG_LEVEL": "2", "PLACEID_MODEL_CACHE": str(work / "model-cache")}
        photos = make_photos(settings, work)
        photo_40mp = _photo_40mp(settings)
        # Served to both: predict answers with it, ingest vets each photo with it (placeid.vetting).
        registry = Registry(db, ensure_bucket(settings, settings.models_bucket_name))
        registry.register(run_dir)
        registry.promote(manifest["version"], force=True)
        if args.only in (None, "predict"):
            hostile = hostile_images(settings, photo_40mp, settings.max_request_bytes)
            results["hostile_bytes"] = {name: len(data) for name, data in hostile.items()}
            results["predict"] = bench_predict(settings, env, run_dir, photos, hostile, args, work)
        if args.only in (None, "ingest"):
            concurrency = ingest_concurrency()
            results["ingest"] = {
                "large": bench_ingest(settings, env, ingest_images(settings, photo_40mp), args.events, concurrency),
                "photos_12mp": bench_ingest(settings, env, {"12mp.jpg": photos["12mp"],
                                                            "12mp_camera.jpg": photos["12mp_camera"]},
                                            args.events, concurrency)}
    finally:
        stack.down()
    previous = RESULTS / "hostile.json"  # a half not run this time keeps its last figures
    if args.only and previous.exists():
        kept = json.loads(previous.read_text())
        results.update({key: kept[key] for key in ("predict", "hostile_bytes", "ingest")
                        if key not in results and key in kept})

    goals = {}
    table = Table(title=f"hostile inputs ({manifest['version']}, {manifest['input_size']} px)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("budget", justify="right")
    if "predict" in results:
        p = results["predict"]
        goals["predict_hostile_le_300mib"] = p["hostile"]["peak_rss_mib"] <= BUDGETS_MIB["predict_hostile"]
        goals["predict_answers_after_hostile"] = p["hostile"]["after"]["correct"]
        goals["predict_normal_le_200mib"] = p["normal"]["peak_rss_mib"] <= BUDGETS_MIB["predict_normal"]
        normal_errors = sum(n for counts in p["normal"]["statuses"].values() for s, n in counts.items() if s != "200")
        goals["predict_normal_zero_errors"] = normal_errors == 0
        table.add_row("predict, 8 clients, real photos: peak RSS MiB", str(p["normal"]["peak_rss_mib"]), "200")
        table.add_row("predict, 8 clients, hostile images: peak RSS MiB", str(p["hostile"]["peak_rss_mib"]), "300")
        table.add_row("predict after the hostile run: real photo", json.dumps(p["hostile"]["after"]), "correct")
        for name, counts in p["hostile"]["statuses"].items():
            table.add_row(f"  {name}", json.dumps(counts), "")
        for photo in ("12mp", "12mp_camera"):
            two, one = p[f"latency_{photo}_2cpu"], p[f"latency_{photo}_1cpu"]
            table.add_row(f"{photo} p50 / p99 ms, 2 CPUs | 1 CPU (taskset)",
                          f"{two['p50_ms']} / {two['p99_ms']} | {one['p50_ms']} / {one['p99_ms']}", "")
    if "ingest" in results:
        for key, run in results["ingest"].items():
            goals[f"ingest_{key}_le_250mib"] = run["peak_rss_mib"] <= BUDGETS_MIB["ingest"]
            table.add_row(f"ingest {key}, {run['concurrency']} at once: peak RSS MiB (base)",
                          f"{run['peak_rss_mib']} ({run['base_rss_mib']})", "250")
            table.add_row(f"  outcomes; budget {run['budget_mib']} MiB, most reserved",
                          f"{run['statuses']}; {run['budget_peak_reserved_mib']} MiB", "")
    console.print(table)
    console.print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in goals.items()))
    path = save("hostile", {**results, "budgets_mib": BUDGETS_MIB, "goals": goals})
    console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
