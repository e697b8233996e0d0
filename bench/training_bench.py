"""Training benchmark on world30 (group-aware split): the default model (EfficientNet-Lite0), the previous default
(MobileNetV2), the default with the top of its backbone fine-tuned, and the paper's CNN, side by side.

    python bench/training_bench.py [--only default|mobilenet_v2|fine_tuned|paper]   # prints a table, saves
                                                                                    # bench/results/training.json

Keys saved per model: test-split top-1/top-3/macro F1 for Keras, TFLite float16 and int8; int8 vs Keras top-1
agreement on the test split and the parity gate (held-out photos x 4 views, 95 % lower bound, passed); model
sizes in bytes; unknown-place rule and its rates (negatives rejected, test landmark photos wrongly rejected);
train and total seconds (this machine's CPU); the process's peak RSS after the run (VmHWM: run one model per
process, ``--only``, for a model's own figure)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import RESULTS, peak_rss_mib, save  # noqa: E402
from placeid.catalog import catalog_snapshot, read_catalog  # noqa: E402
from placeid.config import Settings  # noqa: E402
from training.dataset import from_folder, load_negatives  # noqa: E402
from training.train import TrainConfig, TrainingFailed, default_weights, run_training  # noqa: E402

GOALS = {"default_top1": 0.93, "default_macro_f1": 0.93, "int8_max_bytes": 6 * 2**20, "negatives_rejected": 0.95,
         "landmarks_wrongly_rejected": 0.03, "train_seconds": 1200, "peak_rss_mib": 4096}

CONFIGS = {"default": TrainConfig(), "mobilenet_v2": TrainConfig(backbone="mobilenet_v2_1.0"),
           "fine_tuned": TrainConfig(fine_tune_epochs=10), "paper": TrainConfig.for_model("paper")}



def summarize(out_dir: Path, error: str | None) -> dict:
    metrics = json.loads((out_dir / "metrics.json").read_text())
    row = {name: {k: round(metrics[name][k], 4) for k in ("top1", "top3", "macro_f1")}
           for name in ("keras", "tflite_float16", "tflite_int8")}
    row.update(int8_keras_top1_agreement=round(metrics["int8_keras_top1_agreement"], 4), parity=metrics.get("parity"),
               model_bytes=metrics["model_bytes"], split_counts=metrics["split_counts"],
               train_seconds=metrics["train_seconds"], total_seconds=metrics["total_seconds"],
               unknown_place=metrics.get("unknown_place"), failed=error)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=tuple(CONFIGS))
    args = parser.parse_args()
    settings = Settings.from_env()
    examples = from_folder(settings.world30_dir / "images")
    negatives = load_negatives(settings.data_dir / "negatives" / "images")
    places = catalog_snapshot(read_catalog(settings.world30_dir / "places.json"))
    previous = json.loads((RESULTS / "training.json").read_text()) if (RESULTS / "training.json").exists() else {}
    results = previous.get("models", {})
    for name, config in CONFIGS.items():
        if args.only and args.only != name:
            continue
        out_dir = Path(tempfile.mkdtemp(prefix=f"placeid-train-{name}-"))
        error = None
        try:
            run_training(config, examples, negatives, places, out_dir, default_weights(config, settings.weights_dir))
        except TrainingFailed as exc:
            error = str(exc)
        results[name] = {"config": {"model": config.model, "backbone": config.backbone if config.model != "paper"
                                    else None, "size": config.size, "fine_tune_epochs": config.fine_tune_epochs},
                         **summarize(out_dir, error),
                         "peak_rss_mib": peak_rss_mib(os.getpid()),
                         "outputs": str(out_dir)}
    path = save("training", {"models": results, "goals": GOALS,
                             "data": {"photos": len(examples), "negatives": len(negatives)}})
    table = Table(title="training on world30 (test split, group-aware)")
    for column in ("model", "top-1 keras", "top-1 int8", "top-3 int8", "macro F1 int8", "parity (lower 95)",
                   "int8 MB", "neg. rejected", "landmarks rejected", "train s", "peak MiB"):
        table.add_column(column)
    for name, row in results.items():
        unknown = row.get("unknown_place") or {}
        table.add_row(name, f"{row['keras']['top1']:.3f}", f"{row['tflite_int8']['top1']:.3f}",
                      f"{row['tflite_int8']['top3']:.3f}", f"{row['tflite_int8']['macro_f1']:.3f}",
                      f"{(row.get('parity') or {}).get('agreement_lower_95', 0):.3f}",
                      f"{row['model_bytes']['int8'] / 2**20:.2f}",
                      f"{unknown.get('negatives_rejected', 0):.3f}", f"{unknown.get('landmarks_wrongly_rejected', 0):.3f}",
                      f"{row['train_seconds']:.0f}", f"{row.get('peak_rss_mib', 0):.0f}")
    Console().print(table)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
