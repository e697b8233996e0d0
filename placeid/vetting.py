"""The model vets the collection: the serving model's answer for each new photo, and what ingest does with it.

A labelled photo that the model calls "no known place", or confidently calls another place, is a ``suspect``:
quarantined with the model's suggestion. An unlabelled photo (under ``raw/inbox/`` or with no label at all) gets
the model's label when the model is sure enough (``label_source: model``), else it is quarantined as ``unsure``
with the suggestion. "Sure enough" is the bundle's ``vetting.auto_label_threshold``: the top-1 probability from
which training measured its answers right on ``target_precision`` of the validation photos (its precision on the
test photos ships beside it). With no model being served, photos are ingested unchecked, as before vetting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from placeid.config import Settings
from placeid.logs import get_logger, log
from placeid.serving import ModelCache
from placeid_edge.bundle import Bundle, Prediction
from placeid_edge.errors import PlaceidError

logger = get_logger("placeid.vetting")

#: What the model made of a photo (the record's ``vetting.outcome``).
AGREES = "agrees"  # labelled; the model does not contradict the label
SUSPECT = "suspect"  # labelled; the model says no known place, or confidently another place: quarantined
LABELLED = "labelled"  # unlabelled; the model is sure: its answer is the label
UNSURE = "unsure"  # unlabelled; the model is not sure: quarantined with its suggestion
UNCHECKED = "unchecked"  # no model was being served
OUTCOMES = (AGREES, SUSPECT, LABELLED, UNSURE, UNCHECKED)
#: Suggested review actions.
RELABEL, REJECT, ACCEPT = "relabel", "reject", "accept"


@dataclass(frozen=True)
class Verdict:
    """What vetting decided for one photo: ``outcome``, the label to use (``place_id``, the model's when
    ``labelled``), the reason a quarantined photo gets, and the record's ``vetting`` field."""

    outcome: str
    place_id: str | None
    reason: str | None
    record: dict
    features: np.ndarray | None = field(default=None, repr=False, compare=False)  # the model's, for near duplicates

    @property
    def quarantine(self) -> bool:
        return self.outcome in (SUSPECT, UNSURE)


def auto_label_threshold(bundle: Bundle) -> float | None:
    """The top-1 probability from which ``bundle``'s answer labels a photo or contradicts its label (None: never)."""
    value = (bundle.manifest.get("vetting") or {}).get("auto_label_threshold")
    return float(value) if isinstance(value, (int, float)) else None


def judge(prediction: Prediction, label: str | None, threshold: float | None) -> Verdict:
    """The verdict on a photo labelled ``label`` (None: unlabelled) that the model answered ``prediction``."""
    top = prediction.top_k[0]
    sure = not prediction.unknown and threshold is not None and top["probability"] >= threshold
    answer = "no known place" if prediction.unknown else f"{top['place_id']} (p = {top['probability']:.2f})"
    suggestion = ({"action": REJECT, "place_id": None} if prediction.unknown else
                  {"action": RELABEL if label else ACCEPT, "place_id": top["place_id"],
                   "probability": top["probability"]})
    if label is None:
        outcome = LABELLED if sure else UNSURE
        reason = None if sure else f"unsure: unlabelled, and the model says {answer}, below its labelling threshold"
        if prediction.unknown:
            reason = "unsure: unlabelled, and the model says no known place"
        place_id = top["place_id"] if sure else None
    elif prediction.unknown or (sure and top["place_id"] != label):
        outcome, place_id = SUSPECT, label
        reason = f"suspect: labelled {label!r}, the model says {answer}"
    else:
        outcome, place_id, reason, suggestion = AGREES, label, None, None
    record = {"outcome": outcome, "model_version": prediction.model_version,
              "top_k": [{"place_id": c["place_id"], "probability": c["probability"]} for c in prediction.top_k],
              "unknown": prediction.unknown, "rejection": prediction.rejection, "label_threshold": threshold,
              "suggestion": suggestion}
    return Verdict(outcome, place_id, reason, record, prediction.features)


def unchecked(why: str) -> Verdict:
    """The verdict on a photo no model looked at (``why``: no model served, or it could not be loaded)."""
    return Verdict(UNCHECKED, None, None, {"outcome": UNCHECKED, "why": why})


class Vetter:
    """The serving model (the bundle the serving pointer names, cached and hot-swapped as predict does) and the
    verdict it gives each photo."""

    def __init__(self, settings: Settings, models: ModelCache):
        self.settings = settings
        self.models = models

    def bundle(self) -> Bundle | None:
        """The model to vet with, or None (logged) when none is served or it cannot be had right now."""
        try:
            return self.models.bundle()
        except PlaceidError as exc:
            log(logger, logging.INFO, "no model to vet with", error=exc.message)
            return None

    def vet(self, image: Image.Image, label: str | None) -> Verdict:
        """The verdict on ``image`` (decoded, oriented RGB) filed under ``label`` (None: unlabelled)."""
        if not self.settings.vet_uploads:
            return unchecked("vetting is off (PLACEID_VET_UPLOADS)")
        bundle = self.bundle()
        if bundle is None:
            return unchecked("no model is being served")
        return judge(bundle.predict(image, top_k=self.settings.top_k), label, auto_label_threshold(bundle))
