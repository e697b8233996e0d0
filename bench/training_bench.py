"""Training benchmark on world30: each model by k-fold means (group-aware folds with disjoint test photos), and
whether training's memory grows with the collection.

    python bench/training_bench.py [--only NAME ...] [--folds 3] [--memory-scale 4] [--no-memory]
    # prints a table, saves bench/results/training.json

Models: the default (EfficientNet-Lite0), EfficientNet-Lite2, MobileNetV2 1.0, and the paper's CNN (``--only``).
Each (model, fold) trains in its own process (``placeid train``'s ``run_training``, fold k: ``TrainConfig.fold``),
so its peak memory (the child's maximum resident set, from ``wait4``) is its own.

Memory: the default model, fold 0, trained on world30 and on a set ``--memory-scale`` times larger (every photo
plus augmented copies: crop, small tilt, colour, JPEG re-encoding, written to a temporary folder); the two peaks
and their ratio. The goal is a ratio below 1.2 and both under 4 GiB. The larger set's accuracy is not a figure
of merit (its copies are near duplicates that can fall on both sides of a split).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import RESULTS, save  # noqa: E402

GOALS = {"top1": 0.93, "macro_f1": 0.93, "int8_max_bytes": 6 * 2**20, "negatives_rejected": 0.95,
         "landmarks_wrongly_rejected": 0.03, "train_seconds": 1200, "peak_rss_mib": 4096, "memory_ratio": 1.2}

#: Model name -> TrainConfig.for_model arguments.
CONFIGS = {"default": {}, "paper": {"model": "paper"}, "efficientnet_lite2": {"backbone": "efficientnet_lite2"},
           "mobilenet_v2": {"backbone": "mobilenet_v2_1.0"}}

#: The figures averaged over folds: name -> how to read it from one fold's row.
FIGURES = {
    "top1": lambda row: row["tflite_int8"]["top1"],
    "macro_f1": lambda row: row["tflite_int8"]["macro_f1"],
    "keras_top1": lambda row: row["keras"]["top1"],
    "parity_lower_95": lambda row: row["parity"]["agreement_lower_95"],
    "negatives_rejected": lambda row: (row.get("unknown_place") or {}).get("negatives_rejected"),
    "landmarks_wrongly_rejected": lambda row: (row.get("unknown_place") or {}).get("landmarks_wrongly_rejected"),
    "int8_bytes": lambda row: row["model_bytes"]["int8"],
    "train_seconds": lambda row: row["train_seconds"],
    "total_seconds": lambda row: row["total_seconds"],
    "peak_rss_mib": lambda row: row["peak_rss_mib"],
}


# -- one run, in a child process ------------------------------------------------------------------------

def worker(name: str, fold: int, folder: str | None, out_dir: Path) -> None:
    """Train ``name`` on fold ``fold`` (world30, or ``folder``) into ``out_dir``; its summary in bench_row.json."""
    from placeid.catalog import catalog_snapshot, read_catalog
    from placeid.config import Settings
    from training.dataset import from_folder, load_negatives
    from training.train import TrainConfig, default_weights, run_training

    settings = Settings.from_env()
    config = TrainConfig.for_model(**{"model": "transfer", **CONFIGS[name]}, fold=fold)
    examples = from_folder(folder or settings.world30_dir / "images")
    negatives = load_negatives(settings.data_dir / "negatives" / "images")
    places = catalog_snapshot(read_catalog(settings.world30_dir / "places.json"))
    manifest = run_training(config, examples, negatives, places, out_dir, default_weights(config, settings.weights_dir))
    metrics = json.loads((out_dir / "metrics.json").read_text())
    row = {key: metrics[key] for key in ("keras", "tflite_float16", "tflite_int8", "parity", "model_bytes",
                                         "split_counts", "train_seconds", "total_seconds")}
    for key in ("keras", "tflite_float16", "tflite_int8"):
        row[key] = {k: round(row[key][k], 4) for k in ("top1", "top3", "macro_f1")}
    unknown = metrics.get("unknown_place")
    if unknown:
        row["unknown_place"] = {key: unknown[key] for key in ("rule", "negatives", "negatives_rejected",
                                                              "landmarks_wrongly_rejected")}
    row.update(config={"model": config.model, "backbone": None if config.model == "paper" else config.backbone,
                       "size": config.size, "fold": fold}, photos=len(examples), version=manifest["version"])
    (out_dir / "bench_row.json").write_text(json.dumps(row, indent=1))


def run_child(name: str, fold: int, folder: Path | None = None) -> dict:
    """One (model, fold) in a fresh process; its row with the child's peak resident set."""
    out_dir = Path(tempfile.mkdtemp(prefix=f"placeid-train-{name}-{fold}-"))
    command = [sys.executable, __file__, "--worker", name, "--fold", str(fold), "--out", str(out_dir)]
    if folder:
        command += ["--folder", str(folder)]
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} fold {fold} failed (exit {os.waitstatus_to_exitcode(status)}); see above")
    row = json.loads((out_dir / "bench_row.json").read_text())
    row["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)  # Linux: KiB
    row["outputs"] = str(out_dir)
    return row


def summarize(rows: list[dict]) -> dict:
    """Mean, min and max of each figure over the folds."""
    summary = {}
    for figure, read in FIGURES.items():
        values = [read(row) for row in rows]
        if all(value is not None for value in values):
            summary[figure] = {"mean": round(statistics.fmean(values), 4), "min": min(values), "max": max(values)}
    return summary


# -- the larger set, for the memory check ---------------------------------------------------------------

def scaled_pool(source: Path, destination: Path, scale: int, seed: int = 0) -> Path:
    """``source``'s photos (``<place>/<file>``) plus ``scale - 1`` augmented copies of each, in ``destination``."""
    from PIL import Image, ImageEnhance, ImageOps
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    for path in tqdm(sorted(source.glob("*/*")), desc=f"{scale}x set", unit="photo"):
        place_dir = destination / path.parent.name
        place_dir.mkdir(parents=True, exist_ok=True)
        (place_dir / path.name).symlink_to(path)
        with Image.open(path) as opened:
            photo = ImageOps.exif_transpose(opened).convert("RGB")
        for copy in range(1, scale):
            width, height = photo.size
            keep = rng.uniform(0.8, 0.95)
            left, top = rng.uniform(0, 1 - keep) * width, rng.uniform(0, 1 - keep) * height
            edited = photo.rotate(rng.uniform(-4, 4), resample=Image.BILINEAR)
            edited = edited.crop((int(left), int(top), int(left + keep * width), int(top + keep * height)))
            edited = ImageEnhance.Brightness(edited).enhance(rng.uniform(0.8, 1.2))
            edited = ImageEnhance.Color(edited).enhance(rng.uniform(0.8, 1.2))
            edited.save(place_dir / f"{path.stem}-copy{copy}.jpg", quality=int(rng.integers(75, 93)))
    return destination


def memory_check(scale: int, pool_row: dict) -> dict:
    """The default model, fold 0, on world30 (``pool_row``) and on the ``scale`` x set."""
    from placeid.config import Settings

    with tempfile.TemporaryDirectory(prefix="placeid-scaled-") as folder:
        scaled = scaled_pool(Settings.from_env().world30_dir / "images", Path(folder), scale)
        scaled_row = run_child("default", 0, scaled)
    return {"scale": scale, "pool_photos": pool_row["photos"], "pool_peak_rss_mib": pool_row["peak_rss_mib"],
            "scaled_photos": scaled_row["photos"], "scaled_peak_rss_mib": scaled_row["peak_rss_mib"],
            "ratio": round(scaled_row["peak_rss_mib"] / pool_row["peak_rss_mib"], 3),
            "scaled_train_seconds": scaled_row["train_seconds"], "scaled_total_seconds": scaled_row["total_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="+", choices=tuple(CONFIGS))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--memory-scale", type=int, default=4)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--worker", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--fold", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.fold, args.folder, Path(args.out))
        return

    previous = json.loads((RESULTS / "training.json").read_text()) if (RESULTS / "training.json").exists() else {}
    results = {name: row for name, row in previous.get("models", {}).items() if name in CONFIGS and "folds" in row}
    memory = previous.get("memory")

    def save_results() -> Path:  # after each model: a long run that stops keeps what it measured
        return save("training", {"models": results, "memory": memory, "goals": GOALS, "folds": args.folds})

    for name in args.only or CONFIGS:
        rows = [run_child(name, fold) for fold in range(args.folds)]
        results[name] = {"config": {k: v for k, v in rows[0]["config"].items() if k != "fold"},
                         **summarize(rows), "folds": rows}
        if name == "default" and not args.no_memory:
            memory = memory_check(args.memory_scale, rows[0])
        save_results()
    path = save_results()

    table = Table(title=f"training on world30: int8 model, mean (min..max) over {args.folds} group-aware folds")
    for column in ("model", "top-1", "macro F1", "parity lower 95", "neg. rejected", "landmarks rejected",
                   "int8 MB", "train s", "peak MiB"):
        table.add_column(column)

    def cell(row: dict, figure: str, digits: str = ".3f", scale: float = 1.0) -> str:
        value = row.get(figure)
        if not value:
            return "-"
        return (f"{value['mean'] / scale:{digits}} ({value['min'] / scale:{digits}}.."
                f"{value['max'] / scale:{digits}})")

    for name, row in results.items():
        table.add_row(name, cell(row, "top1"), cell(row, "macro_f1"), cell(row, "parity_lower_95"),
                      cell(row, "negatives_rejected"), cell(row, "landmarks_wrongly_rejected"),
                      cell(row, "int8_bytes", ".2f", 2**20), cell(row, "train_seconds", ".0f"),
                      cell(row, "peak_rss_mib", ".0f"))
    console = Console()
    console.print(table)
    if memory:
        console.print(f"memory: {memory['pool_photos']} photos peak {memory['pool_peak_rss_mib']:.0f} MiB, "
                      f"{memory['scaled_photos']} photos ({memory['scale']}x) peak {memory['scaled_peak_rss_mib']:.0f}"
                      f" MiB: ratio {memory['ratio']:.2f} (goal < {GOALS['memory_ratio']})")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
