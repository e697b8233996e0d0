"""A model bundle (TFLite model, labels, places snapshot, manifest) and the predictions made with it."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from placeid_edge.errors import InvalidBundle
from placeid_edge.geo import exif_gps, haversine_km
from placeid_edge.imaging import ValidationLimits, open_image
from placeid_edge.preprocess import COMPATIBLE_PREPROCESSING, PREPROCESSING, ImageSource, prepare_image
from placeid_edge.rejection import FEATURE_RULES, rejection_score
from placeid_edge.runtime import TFLiteModel, run_with_mirror

#: The unknown-place rule's prototypes, in bundles whose rule compares features (float16, places x k rows).
PROTOTYPES_FILE = "prototypes.npy"
#: The file of each part of a bundle (with manifest.json; a run folder may hold more, all hashed in the
#: manifest), by the manifest key that names it. A manifest is untrusted input: it may only
#: restate these fixed names, so no name from it ever becomes a path.
PART_FILES = {"model_file": "model_int8.tflite", "labels_file": "labels.json", "places_file": "places.json"}
#: No file of a bundle may be larger (the model is a few MB); a zip member is checked before it is inflated.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Known places listed next to an EXIF GPS position.
GPS_NEAREST = 3

PlaceLookup = Callable[[str], "dict | None"]


def _part_names(manifest: dict) -> dict[str, str]:
    """Part -> file name for this manifest: the fixed names, and the prototypes when its rule has them.
    Raises :class:`InvalidBundle` when the manifest names any other file."""
    if not isinstance(manifest, dict):
        raise InvalidBundle("manifest.json is not a JSON object")
    names = {}
    for key, fixed in PART_FILES.items():
        if manifest.get(key, fixed) != fixed:
            raise InvalidBundle(f"manifest {key} must be {fixed!r}, not {manifest[key]!r}")
        names[key.removesuffix("_file")] = fixed
    rule = manifest.get("rejection") or {}
    if not isinstance(rule, dict):
        raise InvalidBundle("manifest rejection must be an object")
    prototypes = rule.get("prototypes_file")
    if prototypes is not None:
        if prototypes != PROTOTYPES_FILE:
            raise InvalidBundle(f"manifest prototypes_file must be {PROTOTYPES_FILE!r}, not {prototypes!r}")
        names["prototypes"] = PROTOTYPES_FILE
    return names


def bundle_files(manifest: dict) -> list[str]:
    """The files of the bundle this manifest describes (fixed names only; see :data:`PART_FILES`)."""
    return ["manifest.json", *_part_names(manifest).values()]


def map_url(lat: float, lng: float) -> str:
    """An OpenStreetMap link centred on the point."""
    return f"https://www.openstreetmap.org/?mlat={lat:.6f}&mlon={lng:.6f}#map=16/{lat:.6f}/{lng:.6f}"


@dataclass
class Prediction:
    """The answer for one photo. ``probabilities`` are in the bundle's label order."""

    model_version: str
    unknown: bool
    place: dict | None
    top_k: list[dict]
    probabilities: list[float]
    rejection: dict | None
    gps: dict | None
    timing_ms: dict = field(default_factory=dict)
    #: The model's pooled features of the photo (None when the model has no such output): for near-duplicate
    #: checks in placeid, never part of an answer.
    features: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {key: value for key, value in asdict(replace(self, features=None)).items() if key != "features"}


def _read_member(source: Path, archive: zipfile.ZipFile | None, name: str) -> bytes:
    """One file of a bundle folder or zip, refused above :data:`MAX_FILE_BYTES` before it is read."""
    try:
        size = archive.getinfo(name).file_size if archive else (source / name).stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidBundle(f"{source}: {name} is {size} bytes, over the limit of {MAX_FILE_BYTES}")
        return archive.read(name) if archive else (source / name).read_bytes()
    except (KeyError, FileNotFoundError):
        raise InvalidBundle(f"{source}: {name} is missing") from None


class Bundle:
    """A verified model bundle, ready to predict. Thread-safe.

    ``pool_size`` interpreters may run at once (see :class:`TFLiteModel`)."""

    def __init__(self, manifest: dict, model: bytes, labels: list[str], places: list[dict], source: str = "",
                 num_threads: int | None = None, pool_size: int = 1,
                 limits: ValidationLimits = ValidationLimits(), prototypes: np.ndarray | None = None,
                 part_files: dict[str, bytes] | None = None):
        self.manifest = manifest
        #: The bundle's files as read and checked against the manifest (file name -> bytes; fixed names only):
        #: what a browser keeps to answer offline.
        self.part_files = part_files or {}
        self.source = source
        self.version: str = manifest["version"]
        self.labels = labels
        self.places = {place["place_id"]: place for place in places}
        self.rejection: dict | None = manifest.get("rejection")
        self.mirror_below_margin = float(manifest.get("mirror_below_margin") or 0.0)
        self.limits = limits
        preprocessing = manifest.get("preprocessing", {}).get("name")
        if preprocessing not in COMPATIBLE_PREPROCESSING:
            raise InvalidBundle(f"{source}: built for preprocessing {preprocessing!r}, this package does "
                                f"{PREPROCESSING['name']!r}")
        self.prototypes = prototypes
        self.model = TFLiteModel(model, num_threads=num_threads, pool_size=pool_size, num_classes=len(labels))
        if self.rejection and self.rejection["kind"] in FEATURE_RULES and (
                prototypes is None or not self.model.has_features):
            raise InvalidBundle(f"{source}: its unknown-place rule compares features, but the bundle lacks "
                                "prototypes or the model has no features output")
        if self.model.size != manifest["input_size"] or self.model.num_classes != len(labels):
            raise InvalidBundle(f"{source}: model takes {self.model.size}px and gives {self.model.num_classes} "
                                f"scores; the manifest says {manifest['input_size']}px and labels.json has "
                                f"{len(labels)} labels")

    @classmethod
    def load(cls, path: Path | str, **options) -> "Bundle":
        """Load a bundle from a folder or a ``.zip``, checking every file against the manifest's sha256."""
        path = Path(path)
        if not path.exists():
            raise InvalidBundle(f"no bundle at {path}")
        archive = None
        try:
            archive = zipfile.ZipFile(path) if path.is_file() else None
            manifest = json.loads(_read_member(path, archive, "manifest.json"))
            contents, parts = {}, _part_names(manifest)
            for key, name in parts.items():
                data = _read_member(path, archive, name)
                expected = (manifest.get("files") or {}).get(name)
                if expected != hashlib.sha256(data).hexdigest():
                    raise InvalidBundle(f"{path}: {name} does not match the sha256 in its manifest")
                contents[key] = data
            prototypes = np.load(io.BytesIO(contents["prototypes"]), allow_pickle=False) \
                if "prototypes" in contents else None
            labels, places = json.loads(contents["labels"]), json.loads(contents["places"])
            if not (isinstance(labels, list) and all(isinstance(label, str) for label in labels)):
                raise InvalidBundle(f"{path}: labels.json is not a list of place ids")
            if not (isinstance(places, list) and all(isinstance(p, dict) and "place_id" in p for p in places)):
                raise InvalidBundle(f"{path}: places.json is not a list of places")
            return cls(manifest, contents["model"], labels, places, source=str(path), prototypes=prototypes,
                       part_files={parts[key]: data for key, data in contents.items()}, **options)
        except InvalidBundle:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, OSError, zipfile.BadZipFile) as exc:
            # json.JSONDecodeError is a ValueError; a manifest missing a key or holding the wrong type lands here
            raise InvalidBundle(f"{path}: not a readable bundle ({type(exc).__name__}: {exc})") from None
        finally:
            if archive:
                archive.close()

    @property
    def input_size(self) -> int:
        return self.model.size

    def metadata(self) -> dict:
        """What a client needs to read results: version, labels, input size, preprocessing, rule, metrics."""
        keys = ("version", "created", "model", "input_size", "preprocessing", "rejection", "mirror_below_margin",
                "metrics", "data_fingerprint")
        return {**{key: self.manifest.get(key) for key in keys}, "labels": self.labels, "runtime": self.model.runtime}

    def offline_description(self) -> dict:
        """What a browser needs to answer as this bundle does (the predict page's offline mode): the manifest's
        keys that shape answers with the sha256 of each part file, the part files by role, and the model's
        quantization (scale, zero point) of its input and outputs, which LiteRT.js does not expose."""
        keys = ("version", "created", "model", "input_size", "preprocessing", "rejection", "mirror_below_margin")
        names = _part_names(self.manifest)
        files = self.manifest.get("files") or {}

        def quantization(details: dict | None) -> list[float] | None:
            return [float(value) for value in details["quantization"]] if details else None

        return {"version": self.version,
                "manifest": {**{key: self.manifest.get(key) for key in keys},
                             "files": {name: files.get(name) for name in names.values()}},
                "files": names,
                "bytes": sum(len(self.part_files.get(name, b"")) for name in names.values()),
                "quantization": {"input": quantization(self.model.input), "scores": quantization(self.model.output),
                                 "features": quantization(self.model.features_output)}}

    def predict(self, image: ImageSource, top_k: int = 3, lookup: PlaceLookup | None = None) -> Prediction:
        """Classify one photo (path, bytes or PIL image). ``lookup`` gives fresher place details than the
        bundle's snapshot (the predict function reads Firestore); it may return None to fall back."""
        return self.predict_batch([image], top_k, lookup)[0]

    def predict_batch(self, images: Iterable[ImageSource], top_k: int = 3,
                      lookup: PlaceLookup | None = None) -> list[Prediction]:
        """Classify several photos; decoding errors raise (the first bad photo stops the batch)."""
        started = time.perf_counter()
        pixels, positions, decode_ms = [], [], []
        for source in images:
            begin = time.perf_counter()
            opened = open_image(source)
            pixels.append(prepare_image(opened, self.model.size, self.limits))  # validates, then decodes
            positions.append(exif_gps(opened))  # only from a photo that passed: its pixels are already loaded
            decode_ms.append((time.perf_counter() - begin) * 1000)
        if not pixels:
            return []
        begin = time.perf_counter()
        probabilities, features = run_with_mirror(self.model.run, np.stack(pixels), self.mirror_below_margin)
        inference_ms = (time.perf_counter() - begin) * 1000 / len(pixels)
        scores = (rejection_score(probabilities, self.rejection["kind"], features, self.prototypes)
                  if self.rejection else [None] * len(pixels))
        total_ms = (time.perf_counter() - started) * 1000 / len(pixels)
        predictions = [self._describe(probs, score, gps, top_k, lookup,
                                      {"decode": round(decode, 2), "inference": round(inference_ms, 2),
                                       "total": round(total_ms, 2)})
                       for probs, score, gps, decode in zip(probabilities, scores, positions, decode_ms)]
        if features is not None:
            for prediction, row in zip(predictions, features):
                prediction.features = row
        return predictions

    def place_details(self, place_id: str, lookup: PlaceLookup | None = None) -> dict | None:
        """A place from ``lookup`` when it knows it, else from the bundle's snapshot."""
        found = lookup(place_id) if lookup else None
        return found or self.places.get(place_id)

    def _name(self, place_id: str) -> str:
        return self.places.get(place_id, {}).get("name", place_id)

    def _describe(self, probabilities: np.ndarray, score: float | None, gps: tuple[float, float] | None,
                  top_k: int, lookup: PlaceLookup | None, timing_ms: dict) -> Prediction:
        order = np.argsort(-probabilities, kind="stable")[: max(1, top_k)]  # ties: label order (as the page)
        candidates = [{"place_id": self.labels[i], "name": self._name(self.labels[i]),
                       "probability": round(float(probabilities[i]), 6)} for i in order]
        unknown = score is not None and bool(score < self.rejection["threshold"])
        place = None
        if not unknown:
            best = candidates[0]
            details = self.place_details(best["place_id"], lookup) or {"place_id": best["place_id"],
                                                                         "name": best["name"]}
            place = {**details, "probability": best["probability"]}
            location = details.get("location")
            if location:
                place["map_url"] = map_url(location["lat"], location["lng"])
        rejection = None
        if score is not None:
            rejection = {"rule": self.rejection["kind"], "threshold": self.rejection["threshold"],
                         "score": round(float(score), 6)}
        return Prediction(self.version, unknown, place, candidates,
                          [round(float(p), 6) for p in probabilities], rejection, self._gps(gps), timing_ms)

    def _gps(self, position: tuple[float, float] | None) -> dict | None:
        if position is None:
            return None
        lat, lng = position
        distances = sorted((haversine_km(lat, lng, p["location"]["lat"], p["location"]["lng"]), place_id)
                           for place_id, p in self.places.items() if p.get("location"))
        nearest = [{"place_id": place_id, "name": self._name(place_id), "distance_km": round(km, 3)}
                   for km, place_id in distances[:GPS_NEAREST]]
        return {"lat": lat, "lng": lng, "map_url": map_url(lat, lng), "nearest_places": nearest}

