"""Serving benchmark: the predict function (edge package, int8 TFLite, draft decode) against a baseline that
serves the same run's SavedModel with full TensorFlow (bench/baseline_function.py), same machine, same photos.

    python bench/serving_bench.py [--run RUN_DIR] [--seconds 30] [--requests 200]

It starts its own Firestore/Pub/Sub/GCS emulators, loads the catalog, registers and promotes RUN_DIR (default:
the newest run under .placeid/runs), and makes the photos: 12-megapixel JPEGs from world30 originals (one of
median size, and the largest, a camera photo's detail) and a 320-px photo. For each server: cold start (process start to first answer, median of 3), warm latency p50/p99
per photo through HTTP, throughput with 8 concurrent clients, errors, and peak RSS. Prints a table and saves
bench/results/serving.json.
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
from pathlib import Path

import requests
from PIL import Image, ImageOps
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import free_port, peak_rss_mib, percentile, save  # noqa: E402
from placeid.catalog import bundled_catalog_path, load_catalog, read_catalog  # noqa: E402
from placeid.config import REPO_ROOT, Settings  # noqa: E402
from placeid.registry import Registry  # noqa: E402
from placeid.local.stack import LocalStack, function_argv  # noqa: E402
from placeid.store import ensure_bucket, firestore_client  # noqa: E402
from placeid_edge.bundle import Bundle  # noqa: E402

console = Console()
CLIENTS = 8


def make_photos(settings: Settings, folder: Path) -> dict[str, bytes]:
    """12-megapixel JPEGs (4000x3000, quality 90) made from world30 originals: ``12mp`` from the original of
    median size (a typical web photo, upscaled: smooth, little data to decode) and ``12mp_camera`` from the
    largest (a camera photo's detail: the most data); and a 320-px world30 photo."""
    sizes = {p: Image.open(p).size for p in (settings.data_dir / "world30-originals").glob("*/*")
             if p.suffix.lower() in (".jpg", ".jpeg")}
    originals = sorted(sizes, key=lambda p: (sizes[p][0] * sizes[p][1], p.name))
    sources = {"12mp": originals[len(originals) // 2], "12mp_camera": originals[-1]}
    images = {name: ImageOps.fit(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), (4000, 3000),
                                 Image.Resampling.LANCZOS) for name, path in sources.items()}
    small = Image.open(sorted((settings.world30_dir / "images" / "colosseum").glob("*.jpg"))[0]).convert("RGB")
    small.thumbnail((320, 320), Image.Resampling.LANCZOS)
    images["320px"] = small
    photos = {}
    for name, image in images.items():
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        photos[name] = out.getvalue()
        (folder / f"{name}.jpg").write_bytes(photos[name])
    for name, path in sources.items():
        console.print(f"{name}: {len(photos[name]) / 1e6:.1f} MB, from {path.parent.name}/{path.name} "
                      f"({sizes[path][0]}x{sizes[path][1]})")
    return photos


def post(session: requests.Session, url: str, data: bytes) -> requests.Response:
    return session.post(url, data=data, headers={"Content-Type": "image/jpeg"}, timeout=120)


def start_and_time(argv: list[str], env: dict, url: str, photo: bytes, log: Path) -> tuple[subprocess.Popen, float]:
    """Start a server; seconds from process start to its first successful answer."""
    started = time.perf_counter()
    with open(log, "ab") as handle:
        process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=str(REPO_ROOT))
    session = requests.Session()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{argv[:4]} exited while starting; see {log}")
        try:
            if post(session, url, photo).status_code == 200:
                return process, time.perf_counter() - started
        except requests.ConnectionError:
            pass
        time.sleep(0.005)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, 15)
    process.wait(timeout=20)


def latency(url: str, photo: bytes, count: int, label: str) -> dict:
    session = requests.Session()
    for _ in range(10):
        post(session, url, photo).raise_for_status()
    times = []
    for _ in tqdm(range(count), desc=label, unit="req", leave=False):
        begin = time.perf_counter()
        post(session, url, photo).raise_for_status()
        times.append((time.perf_counter() - begin) * 1000)
    return {"p50_ms": round(statistics.median(times), 1), "p99_ms": percentile(times, 99)}


def throughput(url: str, photo: bytes, seconds: float) -> dict:
    """``CLIENTS`` threads posting back to back for ``seconds``."""
    done, errors, lock = [0], [0], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client():
        session = requests.Session()
        while time.perf_counter() < deadline:
            try:
                ok = post(session, url, photo).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                done[0] += ok
                errors[0] += not ok

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    return {"requests_per_s": round(done[0] / elapsed, 1), "answered": done[0], "errors": errors[0],
            "seconds": round(elapsed, 1)}


def bench_server(name: str, argv: list[str], env: dict, url: str, photos: dict[str, bytes], args, logs: Path) -> dict:
    colds = []
    for attempt in range(3):
        process, seconds = start_and_time(argv, env, url, photos["320px"], logs / f"{name}.log")
        colds.append(seconds)
        if attempt < 2:
            stop(process)
    console.print(f"{name}: cold starts {', '.join(f'{c:.2f}' for c in colds)} s")
    try:
        result = {"cold_start_s": round(statistics.median(colds), 2), "cold_starts_s": [round(c, 2) for c in colds]}
        for photo in ("12mp", "12mp_camera", "320px"):
            result[f"latency_{photo}"] = latency(url, photos[photo], args.requests, f"{name} {photo}")
        for photo in ("320px", "12mp"):
            result[f"throughput_{photo}"] = throughput(url, photos[photo], args.seconds)
        result["peak_rss_mib"] = peak_rss_mib(process.pid)
    finally:
        stop(process)
    return result


def in_process(run_dir: Path, photos: dict[str, bytes]) -> dict:
    """Draft decode + int8 inference in this process, no HTTP (what the edge package costs on a device)."""
    bundle = Bundle.load(run_dir)
    result = {}
    for name in ("12mp", "12mp_camera"):
        for _ in range(5):
            bundle.predict(photos[name])
        timings = [bundle.predict(photos[name]).timing_ms for _ in range(50)]
        result[name] = {key: round(statistics.median(t[key] for t in timings), 1)
                        for key in ("decode", "inference", "total")}
    return result


def newest_run() -> Path:
    """The newest run under .placeid/runs with a manifest, the largest input size (full training) first."""
    runs = [p.parent for p in (REPO_ROOT / ".placeid" / "runs").glob("*/manifest.json")]
    if not runs:
        sys.exit("no run with a manifest under .placeid/runs: train one (placeid train --folder "
                 "$PLACEID_DATA/world30/images --out .placeid/runs) or pass --run")
    return max(runs, key=lambda run: (json.loads((run / "manifest.json").read_text())["input_size"], run.name))


def start_emulators(work: Path) -> tuple[Settings, LocalStack]:
    """Firestore, Pub/Sub and fake-gcs-server on free ports for one benchmark run; the clients point at them."""
    settings = Settings.from_env(state_dir=work / "state", project="placeid-bench", firestore_port=free_port(),
                                 pubsub_port=free_port(), gcs_port=free_port(), predict_port=free_port(),
                                 model_cache_dir=work / "model-cache")
    stack = LocalStack(settings)
    stack.up(("firestore", "pubsub", "gcs"))
    os.environ.update(settings.emulator_env())
    return settings, stack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="training run folder (default: the newest under .placeid/runs)")
    parser.add_argument("--seconds", type=float, default=30.0, help="throughput run per photo and server")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per latency measurement")
    args = parser.parse_args()
    run_dir = args.run or newest_run()
    manifest = json.loads((run_dir / "manifest.json").read_text())

    work = Path(tempfile.mkdtemp(prefix="placeid-serving-bench-"))
    settings, stack = start_emulators(work)
    try:
        db = firestore_client(settings.project)
        load_catalog(db, read_catalog(bundled_catalog_path()))
        load_catalog(db, read_catalog(settings.world30_dir / "places.json"))
        registry = Registry(db, ensure_bucket(settings, settings.models_bucket_name))
        registry.register(run_dir)
        registry.promote(manifest["version"], force=True)
        photos = make_photos(settings, work)
        env = {**os.environ, **settings.as_env(), **settings.emulator_env(), "PYTHONPATH": str(REPO_ROOT),
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        predict_url = settings.url(settings.predict_port) + "/"
        placeid = bench_server("placeid", function_argv("predict", settings.host, settings.predict_port), env,
                               predict_url, photos, args, work)
        baseline_port = free_port()
        baseline_argv = [sys.executable, "-m", "functions_framework", "--target", "predict", "--source",
                         str(REPO_ROOT / "bench" / "baseline_function.py"), "--host", settings.host,
                         "--port", str(baseline_port)]
        baseline = bench_server("baseline", baseline_argv, {**env, "BASELINE_SAVED_MODEL": str(run_dir / "saved_model")},
                                settings.url(baseline_port) + "/", photos, args, work)
        direct = in_process(run_dir, photos)
    finally:
        stack.down()

    goals = {
        "cold_start_le_1s": placeid["cold_start_s"] <= 1.0,
        "cold_start_3x_faster": baseline["cold_start_s"] >= 3 * placeid["cold_start_s"],
        "p50_12mp_le_25ms": placeid["latency_12mp"]["p50_ms"] <= 25.0,
        "peak_rss_le_200mb": placeid["peak_rss_mib"] <= 200.0,
        "zero_errors": all(r[f"throughput_{p}"]["errors"] == 0 for r in (placeid, baseline) for p in ("320px", "12mp")),
    }
    table = Table(title=f"serving {manifest['version']} ({manifest['input_size']} px)")
    table.add_column("measure")
    table.add_column("placeid (TFLite int8, draft decode)", justify="right")
    table.add_column("baseline (SavedModel, TensorFlow)", justify="right")
    rows = [("cold start, s (median of 3)", "cold_start_s"),
            ("12 MP JPEG p50 / p99, ms", "latency_12mp"), ("12 MP camera JPEG p50 / p99, ms", "latency_12mp_camera"),
            ("320-px photo p50 / p99, ms", "latency_320px"),
            (f"throughput 320 px, {CLIENTS} clients, req/s (errors)", "throughput_320px"),
            (f"throughput 12 MP, {CLIENTS} clients, req/s (errors)", "throughput_12mp"),
            ("peak RSS, MiB", "peak_rss_mib")]
    for label, key in rows:
        cells = []
        for result in (placeid, baseline):
            value = result[key]
            if key.startswith("latency"):
                value = f"{value['p50_ms']} / {value['p99_ms']}"
            elif key.startswith("throughput"):
                value = f"{value['requests_per_s']} ({value['errors']})"
            cells.append(str(value))
        table.add_row(label, *cells)
    console.print(table)
    for name, timing in direct.items():
        console.print(f"in-process, {name}: decode {timing['decode']} ms + int8 inference {timing['inference']} ms "
                      f"= {timing['total']} ms")
    console.print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in goals.items()))
    path = save("serving", {"model": {"version": manifest["version"], "input_size": manifest["input_size"],
                                      "model": manifest["model"]},
                            "photos": {f"{name}_bytes": len(data) for name, data in photos.items()},
                            "clients": CLIENTS, "placeid": placeid, "baseline": baseline,
                            "in_process_ms": direct, "goals": goals})
    console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
