"""``placeid`` command line: the local stack, the catalog, collection, review and the demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from placeid.config import Settings
from placeid.errors import PlaceidError

console = Console()


def _settings(args) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "target", "local") == "local":
        # Point the Google Cloud clients at the local emulators; with --target cloud they use real services.
        os.environ.update(settings.emulator_env())
    return settings


def _print_table(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[("" if cell is None else str(cell)) for cell in row])
    console.print(table)


# -- stack ----------------------------------------------------------------------------------------

def cmd_stack(args) -> int:
    from placeid.stack import LocalStack

    stack = LocalStack(_settings(args))
    if args.action == "up":
        with console.status("starting the local stack"):
            stack.up()
    elif args.action == "down":
        stack.down()
    report = stack.status()
    _print_table("local stack", ["service", "pid", "healthy", "url", "log"],
                 [[name, s["pid"], s["healthy"], s["url"], s["log"]] for name, s in report.items()])
    if args.action == "up" and not all(s["healthy"] for s in report.values()):
        return 1
    return 0


# -- catalog --------------------------------------------------------------------------------------

def default_catalogs(settings: Settings) -> list[Path]:
    """The bundled Seoul catalog, plus world30's when the data folder has it."""
    from placeid.catalog import bundled_catalog_path

    paths = [bundled_catalog_path()]
    world30 = settings.world30_dir / "places.json"
    if world30.exists():
        paths.append(world30)
    return paths


def cmd_catalog(args) -> int:
    from placeid.catalog import load_catalog, places_within, read_catalog, sites_within
    from placeid.store import firestore_client

    settings = _settings(args)
    db = firestore_client(settings.project)
    if args.action == "load":
        for path in args.files or default_catalogs(settings):
            count = load_catalog(db, read_catalog(path))
            console.print(f"loaded {count} places from {path}")
        return 0
    hits = (places_within if args.places else sites_within)(db, args.lat, args.lng, args.radius_km,
                                                            *([] if args.places else [args.kind]))
    _print_table(f"within {args.radius_km} km of ({args.lat}, {args.lng})", ["id", "name", "kind", "km"],
                 [[h.id, h.data["name"], h.data.get("kind") or h.data.get("category"), h.distance_km] for h in hits])
    return 0


# -- collection -----------------------------------------------------------------------------------

def cmd_collect(args) -> int:
    from placeid.collect import collect_urls, upload_folder

    settings = _settings(args)
    if args.action == "upload":
        report = upload_folder(settings, args.folder, workers=args.workers)
    else:
        report = collect_urls(settings, args.csv, workers=args.workers, timeout_s=args.timeout_s,
                              max_bytes=args.max_bytes, report_path=args.report)
    console.print(f"uploaded {report.uploaded}, skipped {report.skipped} (already there), failed {report.failed}")
    for failure in report.failures[:20]:
        console.print(f"  failed: {failure}")
    return 0 if not report.failures else 2


# -- images and review ----------------------------------------------------------------------------

def status_counts(settings: Settings) -> Counter:
    """Number of image records per status."""
    from placeid.ingest import STATUSES
    from placeid.store import IMAGES, firestore_client
    from google.cloud.firestore_v1.base_query import FieldFilter

    collection = firestore_client(settings.project).collection(IMAGES)
    counts = Counter()
    for status in STATUSES:
        result = collection.where(filter=FieldFilter("status", "==", status)).count().get()
        counts[status] = int(result[0][0].value)
    return counts


def print_summary(counts: Counter, title: str = "ingestion summary") -> None:
    total = sum(counts.values())
    _print_table(title, ["status", "images", "share"],
                 [[s, n, f"{n / total:.1%}" if total else "-"] for s, n in counts.items()] + [["total", total, ""]])


def cmd_images(args) -> int:
    print_summary(status_counts(_settings(args)), "images by status")
    return 0


def cmd_review(args) -> int:
    from placeid.review import REVIEWABLE, Reviewer

    _settings(args)
    reviewer = Reviewer()
    if args.action == "list":
        records = reviewer.list(tuple(args.status.split(",")) if args.status else REVIEWABLE, args.limit)
        _print_table("waiting for review", ["image_id", "status", "place", "reason", "duplicate_of", "source"],
                     [[r["image_id"], r["status"], r.get("place_id"), r.get("reason"), r.get("duplicate_of"),
                       r["source"]["name"]] for r in records])
        return 0
    if args.action == "accept":
        record = reviewer.accept(args.image_id, args.place, args.note)
    elif args.action == "reject":
        record = reviewer.reject(args.image_id, args.reason)
    else:
        record = reviewer.relabel(args.image_id, args.place, args.note)
    console.print(json.dumps({k: record.get(k) for k in ("image_id", "status", "place_id", "reason", "curated")},
                             default=str, indent=1))
    return 0


# -- demo -----------------------------------------------------------------------------------------

def wait_for_records(settings: Settings, expected: int, timeout_s: float = 1800.0) -> Counter:
    """Poll Firestore until ``expected`` image records exist, with a progress bar; returns counts by status."""
    from tqdm import tqdm

    from placeid.store import IMAGES, firestore_client

    images = firestore_client(settings.project).collection(IMAGES)
    deadline = time.monotonic() + timeout_s
    with tqdm(total=expected, desc="ingest", unit="img") as bar:
        while True:
            done = int(images.count().get()[0][0].value)  # one aggregation a second: cheap on any backend
            bar.update(done - bar.n)
            if done >= expected or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    return status_counts(settings)


def cmd_demo(args) -> int:
    from placeid.collect import labelled_files, upload_folder
    from placeid.stack import LocalStack

    settings = _settings(args)
    stack = LocalStack(settings)
    with console.status("starting the local stack (Firestore, Pub/Sub, Cloud Storage, ingest, bridge)"):
        stack.up()
    args.files = None
    args.action = "load"
    cmd_catalog(args)
    folder = settings.world30_dir / "images"
    if not folder.is_dir():
        console.print(f"[red]no photos at {folder}: set PLACEID_DATA to the shared data folder[/red]")
        return 1
    console.print(f"collect: uploading {folder} to gs://{settings.bucket}/{settings.raw_prefix}")
    started = time.monotonic()
    report = upload_folder(settings, folder)
    counts = wait_for_records(settings, len(labelled_files(folder)))
    elapsed = time.monotonic() - started
    print_summary(counts)
    console.print(f"uploaded {report.uploaded} new, skipped {report.skipped}; "
                  f"{sum(counts.values())} records after {elapsed:.1f} s. Stop the stack: placeid stack down")
    return 0


# -- parser ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="placeid", description=__doc__)
    parser.add_argument("--target", choices=("local", "cloud"), default=os.environ.get("PLACEID_TARGET", "local"),
                        help="local emulators (default) or real Google Cloud (ambient credentials)")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="local emulators, ingest function and bridge")
    stack.add_argument("action", choices=("up", "down", "status"))
    stack.set_defaults(func=cmd_stack)

    catalog = sub.add_parser("catalog", help="place catalog")
    catalog_sub = catalog.add_subparsers(dest="action", required=True)
    load = catalog_sub.add_parser("load", help="load catalog JSON files (default: Seoul 12 + world30)")
    load.add_argument("files", nargs="*", type=Path)
    near = catalog_sub.add_parser("near", help="sites (or places) within a radius of a point")
    near.add_argument("lat", type=float)
    near.add_argument("lng", type=float)
    near.add_argument("--radius-km", type=float, default=1.0)
    near.add_argument("--kind", choices=("attraction", "restaurant", "lodging"))
    near.add_argument("--places", action="store_true", help="search places instead of nearby sites")
    catalog.set_defaults(func=cmd_catalog)

    collect = sub.add_parser("collect", help="put photos into raw/<place_id>/ of the bucket")
    collect_sub = collect.add_subparsers(dest="action", required=True)
    upload = collect_sub.add_parser("upload", help="upload a folder laid out as <place_id>/<file>")
    upload.add_argument("folder", type=Path)
    upload.add_argument("--workers", type=int, default=8)
    urls = collect_sub.add_parser("urls", help="download a CSV of place_id,url into the bucket")
    urls.add_argument("csv", type=Path)
    urls.add_argument("--workers", type=int, default=8)
    urls.add_argument("--timeout-s", type=float, default=15.0)
    urls.add_argument("--max-bytes", type=int, default=None)
    urls.add_argument("--report", type=Path, default=Path("collect-report.json"))
    collect.set_defaults(func=cmd_collect)

    images = sub.add_parser("images", help="image records by status")
    images.set_defaults(func=cmd_images)

    review = sub.add_parser("review", help="review quarantined and near-duplicate images")
    review_sub = review.add_subparsers(dest="action", required=True)
    listing = review_sub.add_parser("list")
    listing.add_argument("--status", help="comma-separated statuses (default quarantined,near_duplicate)")
    listing.add_argument("--limit", type=int, default=200)
    accept = review_sub.add_parser("accept")
    accept.add_argument("image_id")
    accept.add_argument("--place", help="accept under this place id")
    accept.add_argument("--note", default="")
    reject = review_sub.add_parser("reject")
    reject.add_argument("image_id")
    reject.add_argument("--reason", required=True)
    relabel = review_sub.add_parser("relabel")
    relabel.add_argument("image_id")
    relabel.add_argument("place")
    relabel.add_argument("--note", default="")
    review.set_defaults(func=cmd_review)

    demo = sub.add_parser("demo", help="stack up, load the catalog, ingest world30 with progress, summarise")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PlaceidError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
