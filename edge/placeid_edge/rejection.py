"""The unknown-place rule stored in a bundle's manifest (``rejection``): calibrated by training, applied by
every consumer of a bundle. A photo is 'unknown' when its score is below the rule's threshold.

- ``max_prob``: the top-1 probability;
- ``margin``: top-1 minus top-2 probability;
- ``prototype_cosine``: the cosine similarity of the photo's pooled features (the model's second output) to
  the nearest of a few prototypes per place (k-means centres of the training photos' features, stored in
  the bundle, ``k`` rows a place in label order): photos far from every known place's look are unknown,
  however confident the softmax is;
- ``prototype_and_prob``: that similarity plus ``PROB_WEIGHT`` x the top-1 probability: a photo must look
  like a known place, and a photo that only half does is kept when the classifier is sure of it (measured on
  world30: fewer landmark photos wrongly rejected at the same share of negatives, README, Training);
- ``prototype_and_known``: that similarity plus ``KNOWN_WEIGHT`` x the probability that the photo shows one of
  the known places at all (the sum of the places' probabilities: 1 - p(none) for a model trained with a "no
  known place" output, whose scores leave that share out; always 1 otherwise). The classifier's "none" and the
  features' distance are two votes that fail on different photos."""

from __future__ import annotations

import numpy as np

RULE_KINDS = ("max_prob", "margin", "prototype_cosine", "prototype_and_prob", "prototype_and_known")
FEATURE_RULES = ("prototype_cosine", "prototype_and_prob", "prototype_and_known")
#: The weight of the top-1 probability (0-1) next to the cosine similarity (about 0.4-0.8 on real photos).
PROB_WEIGHT = 0.1
#: The weight of the known-place probability (0-1) next to the cosine similarity.
KNOWN_WEIGHT = 0.5


def unit_rows(values: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    values = np.asarray(values, dtype=np.float32)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.where(norms > 0, norms, 1.0)


def rejection_score(probabilities: np.ndarray, kind: str, features: np.ndarray | None = None,
                    prototypes: np.ndarray | None = None) -> np.ndarray:
    """Each photo's confidence under the rule ``kind`` (higher = more likely a known place)."""
    probabilities = np.atleast_2d(probabilities)
    if kind in FEATURE_RULES:
        if features is None or prototypes is None:
            raise ValueError(f"the {kind} rule needs the model's features and the bundle's prototypes")
        similarity = (unit_rows(np.atleast_2d(features)) @ unit_rows(prototypes).T).max(axis=1)
        if kind == "prototype_cosine":
            return similarity
        if kind == "prototype_and_prob":
            return similarity + PROB_WEIGHT * probabilities.max(axis=1)
        return similarity + KNOWN_WEIGHT * probabilities.sum(axis=1)
    ordered = np.sort(probabilities, axis=1)
    if kind == "max_prob":
        return ordered[:, -1]
    if kind == "margin":
        return ordered[:, -1] - ordered[:, -2]
    raise ValueError(f"unknown rule {kind!r}; expected one of {', '.join(RULE_KINDS)}")


def apply_rejection(probabilities: np.ndarray, rule: dict | None, features: np.ndarray | None = None,
                    prototypes: np.ndarray | None = None) -> np.ndarray:
    """True where the photo is answered 'unknown place' (never, when the bundle has no rule)."""
    probabilities = np.atleast_2d(probabilities)
    if not rule:
        return np.zeros(len(probabilities), dtype=bool)
    return rejection_score(probabilities, rule["kind"], features, prototypes) < rule["threshold"]
