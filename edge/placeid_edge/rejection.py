"""The unknown-place rule stored in a bundle's manifest (``rejection``): calibrated by training, applied by
every consumer of a bundle."""

from __future__ import annotations

import numpy as np

RULE_KINDS = ("max_prob", "margin")


def rejection_score(probabilities: np.ndarray, kind: str) -> np.ndarray:
    """Confidence under a rule: ``max_prob`` (top-1 probability) or ``margin`` (top-1 minus top-2)."""
    ordered = np.sort(np.atleast_2d(probabilities), axis=1)
    if kind == "max_prob":
        return ordered[:, -1]
    if kind == "margin":
        return ordered[:, -1] - ordered[:, -2]
    raise ValueError(f"unknown rule {kind!r}; expected one of {', '.join(RULE_KINDS)}")


def apply_rejection(probabilities: np.ndarray, rule: dict | None) -> np.ndarray:
    """True where the photo is answered 'unknown place' (never, when the bundle has no rule)."""
    probabilities = np.atleast_2d(probabilities)
    if not rule:
        return np.zeros(len(probabilities), dtype=bool)
    return rejection_score(probabilities, rule["kind"]) < rule["threshold"]
