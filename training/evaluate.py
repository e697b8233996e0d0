"""Metrics (numpy only), calibration of the unknown-place rule, and plots."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from placeid_edge.rejection import FEATURE_RULES, RULE_KINDS, rejection_score, unit_rows


def classification_metrics(probabilities: np.ndarray, truth: np.ndarray, labels: list[str]) -> dict:
    """Top-1/top-3 accuracy, macro and per-place precision/recall/F1, and the confusion matrix."""
    n = len(labels)
    predicted = probabilities.argmax(axis=1)
    top3 = np.argsort(-probabilities, axis=1)[:, :3]
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(axis=0), out=np.zeros(n), where=confusion.sum(axis=0) > 0)
    recall = np.divide(tp, confusion.sum(axis=1), out=np.zeros(n), where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    present = confusion.sum(axis=1) > 0
    return {
        "count": int(len(truth)),
        "top1": float((predicted == truth).mean()),
        "top3": float((top3 == truth[:, None]).any(axis=1).mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_place": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(confusion[i].sum())} for i, label in enumerate(labels)},
        "confusion_matrix": confusion.tolist(),
    }


def place_prototypes(features: np.ndarray, targets: np.ndarray, per_place: int, num_classes: int | None = None,
                     seed: int = 0) -> np.ndarray:
    """``per_place`` unit-length k-means centres of each place's training features, stacked place by place in
    label order (``per_place`` rows each: a place with fewer photos repeats its centres, a place with none gets
    zero rows): what the ``prototype_cosine`` and ``prototype_and_prob`` rules compare a photo with."""
    from scipy.cluster.vq import kmeans2

    num_classes = int(targets.max()) + 1 if num_classes is None else num_classes
    centres = np.zeros((num_classes, per_place, features.shape[1]), dtype=np.float32)
    for place in range(num_classes):
        points = unit_rows(features[targets == place]).astype(np.float64)
        count = min(per_place, len(points))
        if count == 0:
            continue
        found = kmeans2(points, count, seed=seed, minit="++")[0] if count > 1 else points[:1]
        centres[place] = unit_rows(found)[np.arange(per_place) % count]
    return centres.reshape(num_classes * per_place, -1)


def rejection_threshold(negative_scores: np.ndarray, target_false_accept: float) -> float:
    """The threshold that rejects a fresh negative photo with probability >= 1 - ``target_false_accept``
    (split-conformal: the k-th lowest of n calibration scores, k = ceil((1 - target) * (n + 1)), is exceeded
    by a new exchangeable score with probability at most 1 - k / (n + 1)). With too few negatives for that
    promise, the threshold rejects every one of them."""
    scores = np.sort(np.asarray(negative_scores, dtype=np.float64))
    if not len(scores):
        return 0.0
    rank = min(int(np.ceil((1.0 - target_false_accept) * (len(scores) + 1))), len(scores))
    return float(np.nextafter(scores[rank - 1], np.inf))  # just above it: that score is rejected too


def calibrate_rejection(landmark_probs: np.ndarray, negative_probs: np.ndarray, target_false_accept: float,
                        landmark_features: np.ndarray | None = None, negative_features: np.ndarray | None = None,
                        prototypes: np.ndarray | None = None) -> dict:
    """Pick the rule and threshold that reject all but ``target_false_accept`` of negative photos (as
    :func:`rejection_threshold` promises for new ones) while wrongly rejecting the fewest landmark photos. A
    photo is 'unknown' when its score < threshold. Rules on features are candidates when the features and
    prototypes are given."""
    best, candidates = None, {}
    for kind in RULE_KINDS:
        if kind in FEATURE_RULES and (prototypes is None or landmark_features is None):
            continue
        threshold = rejection_threshold(rejection_score(negative_probs, kind, negative_features, prototypes),
                                        target_false_accept)
        scores = rejection_score(landmark_probs, kind, landmark_features, prototypes)
        landmark_rejected = float((scores < threshold).mean())
        candidates[kind] = round(landmark_rejected, 4)
        candidate = {"kind": kind, "threshold": threshold, "target_false_accept": target_false_accept,
                     "calibration_landmark_rejected": landmark_rejected}
        if best is None or landmark_rejected < best["calibration_landmark_rejected"]:
            best = candidate
    return {**best, "candidates_landmark_rejected": candidates}


def label_threshold(top_probability: np.ndarray, correct: np.ndarray, target_precision: float,
                    min_photos: int) -> float | None:
    """The lowest top-1 probability at which the model's answers, taken from the most confident down, are still
    right on at least ``target_precision`` of the photos (and on at least ``min_photos`` of them): the model's
    answer is trusted as a label at or above it. None when no such threshold exists. ``top_probability`` and
    ``correct`` describe the photos the rule did not answer "unknown"."""
    order = np.argsort(-np.asarray(top_probability, dtype=np.float64), kind="stable")
    ranked, right = np.asarray(top_probability, dtype=np.float64)[order], np.asarray(correct, dtype=bool)[order]
    precision = np.cumsum(right) / np.arange(1, len(right) + 1)
    # Only cut between distinct probabilities: every photo scoring the threshold is trusted alike.
    last_of_value = np.append(ranked[1:] != ranked[:-1], True)
    good = np.flatnonzero((precision >= target_precision) & last_of_value & (np.arange(1, len(right) + 1) >= min_photos))
    return float(ranked[good[-1]]) if len(good) else None


def vetting_answers(probabilities: np.ndarray, targets: np.ndarray, unknown: np.ndarray,
                    threshold: float | None) -> dict:
    """What vetting would do with held-out photos whose labels are ``targets``: the share auto-labelled (known
    place, top-1 probability >= ``threshold``) and how many of those labels are right (with its 95 % Wilson
    interval), and the share flagged ``suspect`` (answered unknown, or confidently another place)."""
    top = probabilities.argmax(axis=1)
    confident = ~unknown & (probabilities.max(axis=1) >= (np.inf if threshold is None else threshold))
    right = int((top[confident] == targets[confident]).sum())
    labelled = int(confident.sum())
    contradicted = confident & (top != targets)
    low, high = wilson_interval(right, labelled)
    return {"photos": int(len(targets)), "auto_labelled": labelled,
            "auto_labelled_share": round(labelled / max(len(targets), 1), 4),
            "auto_label_precision": round(right / labelled, 4) if labelled else None,
            "auto_label_precision_95": [round(low, 4), round(high, 4)] if labelled else None,
            "suspect": int((unknown | contradicted).sum()), "suspect_unknown": int(unknown.sum()),
            "suspect_contradicted": int(contradicted.sum()),
            "suspect_share": round(float((unknown | contradicted).mean()), 4)}


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (0, 1 when ``total`` is 0)."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


@contextmanager
def _figure(path: Path, *args, **kwargs):
    """A matplotlib figure (headless) saved to ``path`` as PNG when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    with _figure(path, 1, 2, figsize=(11, 4)) as (_, axes):
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                if key in history:
                    ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
            ax.set_xlabel("epoch (stages: head, fine-tuning, int8-robust head)")
            ax.set_title(metric)
            ax.legend()
            for boundary in history.get("stage_boundary", [])[:-1]:
                ax.axvline(boundary + 0.5, color="grey", lw=0.8)


def plot_confusion(confusion: list[list[int]], labels: list[str], path: Path) -> None:
    matrix = np.asarray(confusion, dtype=float)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6, 0.32 * len(labels))
    with _figure(path, figsize=(size + 1, size)) as (fig, ax):
        image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(image, ax=ax, fraction=0.046)


def plot_per_place_f1(per_place: dict, path: Path) -> None:
    items = sorted(per_place.items(), key=lambda item: item[1]["f1"])
    with _figure(path, figsize=(7, max(3, 0.25 * len(items)))) as (_, ax):
        ax.barh([name for name, _ in items], [m["f1"] for _, m in items], color="tab:green")
        ax.set_xlim(0, 1)
        ax.set_xlabel("F1 on the test split")
        ax.tick_params(axis="y", labelsize=7)


#: The landmark-rejection rates the unknown-place trade-off is reported at (the region that matters).
TRADEOFF_RATES = np.round(np.linspace(0.0, 0.2, 41), 3)


def unknown_place_tradeoff(landmark_scores: np.ndarray, negative_scores: np.ndarray) -> dict:
    """The trade-off of one rule kind as its threshold moves: the share of negatives rejected when the threshold
    rejects each of TRADEOFF_RATES of the landmark photos, and the area under the whole ROC curve. The scores
    must come from photos the model and its prototypes never trained on (the test photos, the negatives)."""
    negatives_rejected = [float((negative_scores < np.quantile(landmark_scores, rate)).mean()) if rate > 0 else 0.0
                          for rate in TRADEOFF_RATES]
    return {"landmarks_rejected": TRADEOFF_RATES.tolist(), "negatives_rejected": negatives_rejected,
            "auroc": round(auroc(landmark_scores, negative_scores), 4)}


def auroc(landmark_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Probability that a landmark photo scores above a negative one (ties count half)."""
    above = (landmark_scores[:, None] > negative_scores[None, :]).mean()
    ties = (landmark_scores[:, None] == negative_scores[None, :]).mean()
    return float(above + ties / 2)


def plot_unknown_place_tradeoff(tradeoff: dict[str, dict], shipped: tuple[str, float, float], path: Path) -> None:
    """One curve per rule kind (negatives rejected against landmark photos rejected), and the shipped rule's
    cross-fitted operating point."""
    with _figure(path, figsize=(6.5, 4.5)) as (_, ax):
        for kind, curve in tradeoff.items():
            ax.plot(np.array(curve["landmarks_rejected"]) * 100, np.array(curve["negatives_rejected"]) * 100,
                    label=f"{kind} (AUROC {curve['auroc']:.3f})")
        kind, landmarks, negatives = shipped
        ax.plot([landmarks * 100], [negatives * 100], "k*", markersize=12, label=f"shipped: {kind}, cross-fitted")
        ax.set_xlabel("landmark photos wrongly rejected (%, test split)")
        ax.set_ylabel("no-landmark photos rejected (%)")
        ax.set_title("unknown place: the trade-off")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
