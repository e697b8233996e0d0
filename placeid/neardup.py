"""Near-duplicate index over 64-bit perceptual hashes that never scans the collection.

Multi-index hashing (a generalised pigeonhole): split the hash into k = d // 2 + 1 bands; two hashes within
Hamming distance d then differ by at most r = d // k bits (0 or 1) in at least one band. Each accepted image
is stored under its k exact band keys, one document per band value (``near_bands/{key}``: image id -> hash).
A lookup reads, in one ``get_all``, the documents of every band value within r bits of the new hash's bands
(69 point reads for d = 8), whatever the collection size; only their members get the true distance checked.
Wide bands (13 bits for d = 8) keep those members few; the plain d + 1 bands of 7 bits would return
ten times more candidates.

Point reads are also what the Firestore emulator serves fast; its queries scan every document.
In production, exempt ``near_bands.members`` from single-field indexing (infra/): nothing queries it.

:class:`FeatureIndex` is the second vote, for what pHashes miss (crops, tilts): the served model's features in a
Firestore vector index, confirmed by a looser pHash distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations

import numpy as np
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.base_vector_query import DistanceMeasure
from google.cloud.firestore_v1.vector import Vector

from placeid.config import PHASH_BITS
from placeid.hashing import hamming_distance
from placeid.store import NEAR_BANDS, NEAR_FEATURES
from placeid_edge.rejection import unit_rows

HASH_BITS = PHASH_BITS
_LATEST = datetime.max.replace(tzinfo=timezone.utc)


def band_layout(distance: int, bits: int = HASH_BITS) -> tuple[int, int, list[int]]:
    """(number of bands k, probe radius r, band widths) for a distance threshold."""
    if not 0 <= distance < bits:
        raise ValueError(f"distance must be within 0..{bits - 1}")
    bands = distance // 2 + 1
    radius = distance // bands
    widths = [bits // bands + (1 if band < bits % bands else 0) for band in range(bands)]
    return bands, radius, widths


def _band_values(hash_hex: str, widths: list[int], bits: int) -> list[int]:
    if len(hash_hex) * 4 != bits:
        raise ValueError(f"expected a {bits}-bit hash, got {len(hash_hex) * 4} bits")
    value, start, parts = int(hash_hex, 16), 0, []
    for width in widths:
        parts.append((value >> (bits - start - width)) & ((1 << width) - 1))
        start += width
    return parts


def band_keys(hash_hex: str, distance: int, bits: int = HASH_BITS) -> list[str]:
    """The k keys a hash is stored under, e.g. ``"5:3:1f2a"`` (band count, band number, value)."""
    bands, _, widths = band_layout(distance, bits)
    return [f"{bands}:{band}:{part:x}" for band, part in enumerate(_band_values(hash_hex, widths, bits))]


def probe_keys(hash_hex: str, distance: int, bits: int = HASH_BITS) -> list[str]:
    """Every stored key a hash within ``distance`` can have: each band value with up to r bits flipped."""
    bands, radius, widths = band_layout(distance, bits)
    keys = []
    for band, (part, width) in enumerate(zip(_band_values(hash_hex, widths, bits), widths)):
        for flips in range(radius + 1):
            for positions in combinations(range(width), flips):
                probe = part
                for position in positions:
                    probe ^= 1 << position
                keys.append(f"{bands}:{band}:{probe:x}")
    return keys


@dataclass(frozen=True)
class NearMatch:
    """An indexed image within the distance; ``indexed_at`` is the commit time of its index entry."""

    image_id: str
    distance: int
    indexed_at: datetime | None

    @property
    def order(self) -> tuple:
        """Arrival order: earlier commit first, image id breaks ties."""
        return (self.indexed_at or _LATEST, self.image_id)


class NearDuplicateIndex:
    """The ``near_bands`` collection: band key -> {image_id: {phash, indexed_at}}."""

    def __init__(self, db: firestore.Client, distance: int, call_options: dict | None = None):
        self.db = db
        self.distance = distance
        self.collection = db.collection(NEAR_BANDS)
        self.call_options = call_options or {}

    def band_refs(self, phash_hex: str) -> list[firestore.DocumentReference]:
        """Documents a hash is stored in."""
        return [self.collection.document(key) for key in band_keys(phash_hex, self.distance)]

    def probe_refs(self, phash_hex: str) -> list[firestore.DocumentReference]:
        """Documents a lookup for a hash reads."""
        return [self.collection.document(key) for key in probe_keys(phash_hex, self.distance)]

    def find(self, phash_hex: str) -> list[NearMatch]:
        """Indexed images within the distance of ``phash_hex``, closest (then earliest) first."""
        return self.find_each([phash_hex])[0]

    def find_each(self, hashes: list[str], exact_bands: Sequence[bool] = ()) -> list[list[NearMatch]]:
        """:meth:`find` for each of ``hashes`` (a photo's pHash, mirrored pHash, ...), in one ``get_all``.

        Where ``exact_bands[i]`` is true, hash ``i`` is looked up under its own k band keys only (5 reads, not
        69): a stored hash within the distance is then found when one band matches exactly, which is certain up to
        k - 1 bits and usual beyond (bench/neardup_bench.py: every mirrored copy and 294 of 295 bordered copies
        that the full probe finds). For the secondary hashes, whose matches are rare."""
        exact = list(exact_bands) + [False] * (len(hashes) - len(exact_bands))
        probes = [(hash_hex, self.band_refs(hash_hex) if only_own else self.probe_refs(hash_hex))
                  for hash_hex, only_own in zip(hashes, exact)]
        wanted = {ref.path: ref for _, refs in probes for ref in refs}
        members = {snap.reference.path: snap.get("members") or {}
                   for snap in self.db.get_all(list(wanted.values()), **self.call_options) if snap.exists}
        found = []
        for hash_hex, refs in probes:
            matches: dict[str, NearMatch] = {}
            for ref in refs:
                for image_id, member in members.get(ref.path, {}).items():
                    if image_id in matches:
                        continue
                    distance = hamming_distance(hash_hex, member["phash"])
                    if distance <= self.distance:
                        matches[image_id] = NearMatch(image_id, distance, member.get("indexed_at"))
            found.append(sorted(matches.values(), key=lambda m: (m.distance, m.order)))
        return found

    def add(self, writer, image_id: str, phash_hex: str) -> None:
        """Add an image through ``writer`` (a transaction or batch); its commit time orders arrivals."""
        for ref in self.band_refs(phash_hex):
            writer.set(ref, {"members": {image_id: {"phash": phash_hex, "indexed_at": firestore.SERVER_TIMESTAMP}}},
                       merge=True)

    def remove(self, writer, image_id: str, phash_hex: str) -> None:
        """Remove an image through ``writer`` (a transaction or batch)."""
        for ref in self.band_refs(phash_hex):
            writer.set(ref, {"members": {image_id: firestore.DELETE_FIELD}}, merge=True)


def rebuild_index(db: firestore.Client, distance: int, accepted: list[tuple[str, str]], page: int = 400) -> int:
    """Replace the whole index by one over ``accepted`` (image id, pHash) pairs for a new ``distance``.

    Run it with ingestion paused (after changing PLACEID_NEAR_DUP_DISTANCE): each band document is written
    once, with every member's ``indexed_at`` set to the rebuild's commit time. Returns the band documents written."""
    collection = db.collection(NEAR_BANDS)
    members: dict[str, dict] = {}
    for image_id, phash in accepted:
        for key in band_keys(phash, distance):
            members.setdefault(key, {})[image_id] = {"phash": phash, "indexed_at": firestore.SERVER_TIMESTAMP}
    stale = [ref for ref in collection.list_documents(page_size=page) if ref.id not in members]
    writes = [("delete", ref, None) for ref in stale] + [("set", collection.document(key), {"members": value})
                                                         for key, value in members.items()]
    for start in range(0, len(writes), page):
        batch = db.batch()
        for kind, ref, value in writes[start:start + page]:
            batch.delete(ref) if kind == "delete" else batch.set(ref, value)
        batch.commit()
    return len(members)


@dataclass(frozen=True)
class FeatureMatch:
    """An accepted image whose model features are close to a new photo's, and its pHash nearly so."""

    image_id: str
    cosine: float
    distance: int  # the smallest pHash distance among the new photo's hashes


class FeatureIndex:
    """The ``near_features`` collection: the served model's pooled features of each accepted image (a Firestore
    vector), its pHash and the model version. The second vote for near duplicates that pHashes miss (a crop, a
    tilt): an accepted image whose features are within ``cosine`` of a new photo's (a nearest-neighbour query on a
    vector index, sub-linear, among images scored by the same model) and whose pHash is within ``loose_distance``
    of one of the photo's hashes. Neither vote alone: distinct photos of one landmark have close features, and
    crops have far pHashes (bench/neardup_bench.py)."""

    #: Nearest neighbours asked for; the votes are checked on each.
    NEIGHBOURS = 5

    def __init__(self, db: firestore.Client, cosine: float, loose_distance: int, call_options: dict | None = None):
        self.collection = db.collection(NEAR_FEATURES)
        self.cosine = cosine
        self.loose_distance = loose_distance
        self.call_options = call_options or {}

    def find(self, features: np.ndarray, model_version: str, hashes: list[str]) -> list[FeatureMatch]:
        """Accepted images both votes put near a photo (its features from ``model_version``, its hashes), closest
        first."""
        query = self.collection.where(filter=FieldFilter("model_version", "==", model_version)).find_nearest(
            vector_field="features", query_vector=Vector(unit_vector(features)), distance_measure=DistanceMeasure.COSINE,
            limit=self.NEIGHBOURS, distance_result_field="cosine_distance")
        matches = []
        for snap in query.stream(**self.call_options):
            cosine = 1.0 - float(snap.get("cosine_distance"))
            distance = min(hamming_distance(mine, snap.get("phash")) for mine in hashes)
            if cosine >= self.cosine and distance <= self.loose_distance:
                matches.append(FeatureMatch(snap.id, round(cosine, 4), distance))
        return sorted(matches, key=lambda m: -m.cosine)

    def add(self, writer, image_id: str, features: np.ndarray, model_version: str, phash_hex: str) -> None:
        """Index an accepted image's features through ``writer`` (a transaction or batch); replaces an older
        model's."""
        writer.set(self.collection.document(image_id), {"features": Vector(unit_vector(features)),
                                                        "model_version": model_version, "phash": phash_hex})

    def remove(self, writer, image_id: str) -> None:
        writer.delete(self.collection.document(image_id))


def unit_vector(values: np.ndarray) -> list[float]:
    """``values`` scaled to unit length, as floats (a Firestore vector)."""
    return unit_rows(np.atleast_2d(np.asarray(values).ravel()))[0].tolist()
