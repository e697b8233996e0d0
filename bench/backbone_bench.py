"""Which backbone: each ImageNet backbone at its training size, compared on world30 by k-fold cross-validation.

    python bench/backbone_bench.py [--folds 3] [--only NAME ...]   # prints a table, saves bench/results/backbones.json

Protocol (one for all backbones, so that they differ only in their features): every world30 photo and every
no-landmark photo goes through the one preprocessing function and the frozen backbone once (streamed in batches:
features, not pixels, are kept). The photos are dealt into ``--folds`` group-aware folds (near duplicates together,
training.dataset.fold_of_each); for each fold a linear softmax head is trained on the other folds' features and
measured on the held-out fold: top-1, macro F1, and how well its top probability tells no-landmark photos (every
negative, never trained on) from the held-out landmark photos: the share of negatives rejected at the operating
point that rejects 5 % of the landmark photos, and the area under that trade-off's ROC curve. The shipped rule is
richer (prototypes, cross-fitted calibration: bench/training_bench.py); this compares the backbones' features on
one simple rule. Means and spreads (min..max) over the folds.

Per backbone also: the int8 TFLite model's size (the whole model: backbone, scaling and the fold-0 head,
calibrated on 100 training photos), and the latency of answering the serving benchmark's 12 MP JPEG with it (decode + preprocess +
int8 inference, 2 threads, p50/p99 of 30 after 5 warm-ups), on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import percentile, save  # noqa: E402
from bench.serving_bench import make_photos  # noqa: E402
from placeid.config import Settings  # noqa: E402
from placeid_edge.preprocess import prepare_image  # noqa: E402
from placeid_edge.runtime import TFLiteModel  # noqa: E402
from training import evaluate  # noqa: E402
from training.dataset import fold_of_each, from_folder, load_negatives  # noqa: E402
from training.export import to_tflite  # noqa: E402
from training.models import BACKBONES, build_transfer  # noqa: E402
from training.train import TrainConfig, default_weights  # noqa: E402

import keras  # noqa: E402

console = Console()
BACKBONE_NAMES = ("mobilenet_v2_1.0", "efficientnet_lite0", "efficientnet_lite2")
LANDMARK_REJECTION = 0.05  # the operating point: the share of held-out landmark photos rejected
BATCH = 32


def features_of(feature_model, examples, size: int, desc: str) -> np.ndarray:
    """Pooled backbone features of every example, preprocessed and run batch by batch."""
    out = []
    for start in tqdm(range(0, len(examples), BATCH), desc=desc, unit="batch"):
        batch = np.stack([prepare_image(e.read(), size) for e in examples[start:start + BATCH]])
        out.append(feature_model.predict(batch.astype(np.float32), verbose=0))
    return np.concatenate(out)


def train_head(features: np.ndarray, targets: np.ndarray, num_classes: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    head = keras.Sequential([keras.Input((features.shape[1],)), keras.layers.Dropout(0.5),
                             keras.layers.Dense(num_classes, activation="softmax")])
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    head.fit(features, targets, epochs=40, batch_size=32, verbose=0)
    return head


def bench_backbone(name: str, settings: Settings, examples, negatives, folds: np.ndarray, photo: bytes) -> dict:
    config = TrainConfig(backbone=name)
    labels = sorted({e.label for e in examples})
    targets = np.array([labels.index(e.label) for e in examples])
    built = build_transfer(len(labels), config.size, name, default_weights(config, settings.weights_dir))
    started = time.monotonic()
    features = features_of(built.feature_model, examples, config.size, f"{name} photos")
    negative_features = features_of(built.feature_model, negatives, config.size, f"{name} negatives")
    feature_seconds = time.monotonic() - started

    rows = []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        head = train_head(features[train], targets[train], len(labels), seed=int(fold))
        probs = head.predict(features[test], verbose=0)
        metrics = evaluate.classification_metrics(probs, targets[test], labels)
        landmark_scores, negative_scores = probs.max(1), head.predict(negative_features, verbose=0).max(1)
        threshold = float(np.quantile(landmark_scores, LANDMARK_REJECTION))
        rows.append({"fold": int(fold), "photos": int(test.sum()), "top1": metrics["top1"],
                     "macro_f1": metrics["macro_f1"], "threshold": threshold,
                     "landmarks_rejected": float((landmark_scores < threshold).mean()),
                     "negatives_rejected": float((negative_scores < threshold).mean()),
                     "auroc": evaluate.auroc(landmark_scores, negative_scores)})
        if fold == folds.min():
            fold0_head = head

    built.head.set_weights(fold0_head.layers[-1].get_weights())  # the same Dense layer; dropout has no weights
    representative = np.stack([prepare_image(e.read(), config.size) for e in examples[:100]])
    model_bytes = to_tflite(built.model, "int8", representative)
    runner = TFLiteModel(model_bytes, num_threads=2, num_classes=len(labels))
    times = []
    for index in range(35):
        begin = time.perf_counter()
        runner.run(prepare_image(photo, config.size)[None])
        if index >= 5:
            times.append((time.perf_counter() - begin) * 1000)

    def summary(key: str) -> dict:
        values = [row[key] for row in rows]
        return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}

    return {"backbone": name, "size": config.size, "imagenet_weights": BACKBONES[name]["weights"],
            "folds": rows, "top1": summary("top1"), "macro_f1": summary("macro_f1"),
            "landmarks_rejected": summary("landmarks_rejected"), "negatives_rejected": summary("negatives_rejected"),
            "auroc": summary("auroc"),
            "int8_bytes": len(model_bytes), "predict_12mp_ms": {"p50": round(statistics.median(times), 1),
                                                                "p99": percentile(times, 99)},
            "feature_seconds": round(feature_seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=BACKBONE_NAMES)
    args = parser.parse_args()
    settings = Settings.from_env()
    examples = from_folder(settings.world30_dir / "images")
    negatives = load_negatives(settings.data_dir / "negatives" / "images")
    folds = fold_of_each(examples, args.folds, settings.near_dup_distance)
    photo = make_photos(settings, Path(tempfile.mkdtemp(prefix="placeid-backbone-bench-")))["12mp"]
    results = {name: bench_backbone(name, settings, examples, negatives, folds, photo)
               for name in (args.only or BACKBONE_NAMES)}

    table = Table(title=f"backbones on world30: {args.folds} group-aware folds, frozen features + linear head "
                        f"({len(examples)} photos, {len(negatives)} negatives)")
    for column in ("backbone", "size", "top-1 mean (min..max)", "macro F1", "negatives rejected at 5 % landmarks",
                   "AUROC", "int8 MB", "12 MP p50 / p99 ms"):
        table.add_column(column)
    for name, row in results.items():
        table.add_row(name, str(row["size"]),
                      f"{row['top1']['mean']:.3f} ({row['top1']['min']:.3f}..{row['top1']['max']:.3f})",
                      f"{row['macro_f1']['mean']:.3f}", f"{row['negatives_rejected']['mean']:.1%}",
                      f"{row['auroc']['mean']:.3f}", f"{row['int8_bytes'] / 2**20:.2f}",
                      f"{row['predict_12mp_ms']['p50']} / {row['predict_12mp_ms']['p99']}")
    console.print(table)
    path = save("backbones", {"protocol": __doc__.split("Protocol", 1)[1].strip(), "folds": args.folds,
                              "photos": len(examples), "negatives": len(negatives), "backbones": results})
    console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
