"""Training data: labelled photos from Firestore + the bucket's ``curated/`` (normal path) or a local folder
and manifest (offline path), a deterministic group-aware stratified split, and a fingerprint of the data."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from placeid.config import Settings
from placeid.ingest import photo_phash
from placeid.images import accepted_images, curated_bucket

SPLITS = ("train", "val", "test")


@dataclass
class Example:
    """One labelled photo. ``source`` is where it came from (a local path or a ``gs://`` URI); ``path`` is the local
    file that holds its bytes, read only when they are needed (a run never holds the collection in memory)."""

    source: str
    label: str
    sha256: str
    phash: str
    path: str = ""
    group: int = -1
    split: str = ""

    def read(self) -> bytes:
        """The photo's bytes."""
        return Path(self.path or self.source).read_bytes()

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data


def _phash(data: bytes) -> str:
    """Ingest's pHash of a photo read from a folder: the two group near duplicates alike."""
    return photo_phash(data, _settings())


@lru_cache(maxsize=1)
def _settings() -> Settings:
    return Settings.from_env()


def _first_per_place(items: list, place_of, limit: int | None) -> list:
    """The first ``limit`` items of each place, in order (all of them without a limit)."""
    if not limit:
        return items
    seen: Counter = Counter()
    kept = []
    for item in items:
        seen[place_of(item)] += 1
        if seen[place_of(item)] <= limit:
            kept.append(item)
    return kept


def from_folder(folder: Path | str, manifest: Path | str | None = None, limit_per_place: int | None = None,
                places: list[str] | None = None) -> list[Example]:
    """Examples from ``folder/<place_id>/*`` (or the ``file``/``place_id`` rows of a manifest.jsonl)."""
    folder = Path(folder)
    rows: list[tuple[Path, str]] = []
    if manifest:
        for line in Path(manifest).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows.append((folder / row["file"], row["place_id"]))
    else:
        rows = [(path, path.parent.name) for path in sorted(folder.glob("*/*")) if path.is_file()]
    if places:
        rows = [row for row in rows if row[1] in places]
    rows = _first_per_place(sorted(rows), lambda row: row[1], limit_per_place)
    examples = []
    for path, label in sorted(rows):
        data = path.read_bytes()
        examples.append(Example(str(path), label, hashlib.sha256(data).hexdigest(), _phash(data)))
    return examples


def from_firestore(db, bucket, cache_dir: Path | str, limit_per_place: int | None = None,
                   places: list[str] | None = None) -> list[Example]:
    """Accepted images and their labels from ``images``; their curated copies (from the bucket each record names,
    through ``bucket``'s client) are streamed to files in ``cache_dir``, named by a hash of their URI."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    records = sorted((s.to_dict() for s in accepted_images(db).stream()), key=lambda r: r["image_id"])
    if places:
        records = [r for r in records if r["place_id"] in places]
    records = _first_per_place(records, lambda record: record["place_id"], limit_per_place)
    examples = []
    for record in records:
        curated = record.get("curated") or {}
        if not curated.get("written"):
            continue
        local = cache_dir / f"{hashlib.sha256(curated['uri'].encode()).hexdigest()}.jpg"
        bucket.client.bucket(curated_bucket(record)).blob(curated["path"]).download_to_filename(str(local))
        examples.append(Example(curated["uri"], record["place_id"], record["hashes"]["file_sha256"]["hex"],
                                record["hashes"]["phash"]["hex"], str(local)))
    return examples


def group_near_duplicates(examples: list[Example], distance: int) -> None:
    """Give near-duplicates (pHash within ``distance``, transitively) one group id."""
    hashes = np.array([int(e.phash, 16) for e in examples], dtype=np.uint64)
    parent = list(range(len(examples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(examples)):
        xor = hashes[i + 1:] ^ hashes[i]
        bits = np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1) if len(xor) else []
        for offset in np.nonzero(np.asarray(bits) <= distance)[0]:
            parent[find(i + 1 + int(offset))] = find(i)
    for index, example in enumerate(examples):
        example.group = find(index)


def _group_digest(members: list[Example], prefix: str = "") -> str:
    """A near-duplicate group's stable identity: sha256 of ``prefix`` + its smallest content hash."""
    return hashlib.sha256(f"{prefix}{min(m.sha256 for m in members)}".encode()).hexdigest()


def split_examples(examples: list[Example], seed: int = 0, fractions=(0.7, 0.15, 0.15),
                   distance: int = Settings.near_dup_distance, fold: int = 0) -> None:
    """Deterministic, stratified by place, group-aware: a near-duplicate group never crosses splits.

    Within each place, groups are ordered by a seeded hash of their smallest content hash, then dealt
    to train/val/test so each split gets its fraction of that place's photos (at least one in val and test
    when the place has three groups or more). ``fold`` k starts the deal k test-shares further along that order,
    so folds 0, 1, 2 ... have disjoint test photos (up to 1 / test fraction folds): k-fold estimates."""
    group_near_duplicates(examples, distance)
    by_place: dict[str, dict[int, list[Example]]] = defaultdict(lambda: defaultdict(list))
    for example in examples:
        by_place[example.label][example.group].append(example)
    for place, groups in by_place.items():
        ordered = sorted(groups.values(), key=lambda members: _group_digest(members, f"{seed}:"))
        total = sum(len(members) for members in ordered)
        targets = {"val": max(1, round(total * fractions[1])), "test": max(1, round(total * fractions[2]))}
        if fold:
            dealt = np.cumsum([len(members) for members in ordered])
            start = int(np.searchsorted(dealt, (fold * targets["test"]) % total, side="right"))
            ordered = ordered[start:] + ordered[:start]
        counts = Counter()
        for members in ordered:
            split = "train"
            if len(ordered) >= 3:
                for candidate in ("test", "val"):
                    if counts[candidate] < targets[candidate]:
                        split = candidate
                        break
            counts[split] += len(members)
            for member in members:
                member.split = split


def fold_of_each(examples: list[Example], folds: int, distance: int = Settings.near_dup_distance) -> np.ndarray:
    """Each example's cross-fitting fold (0 .. folds - 1), by content: near-duplicates share a fold."""
    group_near_duplicates(examples, distance)
    groups: dict[int, list[Example]] = defaultdict(list)
    for example in examples:
        groups[example.group].append(example)
    fold_of_group = {group: int(_group_digest(members), 16) % folds for group, members in groups.items()}
    return np.array([fold_of_group[e.group] for e in examples])


def fingerprint(examples: list[Example]) -> str:
    """sha256 over the sorted (content hash, label) pairs: the identity of a training set."""
    digest = hashlib.sha256()
    for sha, label in sorted((e.sha256, e.label) for e in examples):
        digest.update(f"{sha}:{label}\n".encode())
    return digest.hexdigest()


def class_weights(labels: list[int], num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights, mean 1 over the training photos."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return {index: float(weight) for index, weight in enumerate(weights)}


def load_negatives(folder: Path | str) -> list[Example]:
    """The 'no landmark' photos, for calibrating and measuring the unknown-place rule."""
    examples = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            examples.append(Example(str(path), "", hashlib.sha256(data).hexdigest(), _phash(data)))
    return examples

