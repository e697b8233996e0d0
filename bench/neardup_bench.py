"""Near-duplicate benchmark: which edits of a real photo each method catches, and how often it flags two distinct
photos.

    python bench/neardup_bench.py [--bundle RUN_DIR] [--photos 300]   # a table; saves bench/results/neardup.json

Recall: ``--photos`` world30 photos (seeded sample), each edited as a re-post or a re-crawl would (transforms
below); an edit is caught when the method matches it with its original. False matches: every pair of distinct
world30 photos (1,917 photos; pairs inside one near-duplicate group, pHash <= 8 as training groups them, are real
copies and left out). Methods:

- ``phash``: pHash within the near-duplicate distance (8), what the index looked up alone until now;
- ``phash+mirror``: that, or the mirror image's pHash within it;
- ``phash+mirror+border``: those, or the pHash of the photo without its uniform border (what ingest does now);
- ``features``: cosine of the served model's features at or above a threshold (shown for several);
- ``combined``: ``phash+mirror+border``, or a second vote: features at cosine >= C together with a looser pHash distance
  (min of pHash and mirrored pHash <= D), for the (C, D) pairs shown.

Features come from the int8 bundle in ``--bundle`` (a run folder), as served: the same preprocessing, mirror-
averaged where unsure is not applied (features of the photo as is).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import save  # noqa: E402
from placeid.config import Settings  # noqa: E402
from placeid.hashing import MirroredPHash, PHash, trim_uniform_border  # noqa: E402
from placeid_edge.bundle import Bundle  # noqa: E402
from placeid_edge.preprocess import prepare_image  # noqa: E402
from placeid_edge.rejection import unit_rows  # noqa: E402
from training.dataset import Example, group_near_duplicates  # noqa: E402

console = Console()
DISTANCE = Settings.near_dup_distance
COSINES = (0.80, 0.85, 0.90, 0.95)
COMBINED = ((0.80, 20), (0.85, 20), (0.85, 22), (0.85, 24), (0.90, 24))


def _jpeg(image: Image.Image, quality: int = 90) -> Image.Image:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def _crop(image: Image.Image, share: float, rng: random.Random) -> Image.Image:
    """``share`` of the width and of the height cut off, split at random between the two sides."""
    w, h = image.size
    cut_w, cut_h = int(w * share), int(h * share)
    left, top = rng.randint(0, cut_w), rng.randint(0, cut_h)
    return image.crop((left, top, left + w - cut_w, top + h - cut_h))


def _tilt(image: Image.Image, degrees: float) -> Image.Image:
    """Rotated by ``degrees`` and cropped to the largest centred rectangle with no empty corner."""
    w, h = image.size
    rotated = image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)
    a = np.radians(abs(degrees))
    scale = 1 / (np.cos(a) + np.sin(a) * max(w / h, h / w))
    cw, ch = int(w * scale), int(h * scale)
    return rotated.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def _screenshot(image: Image.Image) -> Image.Image:
    """The photo shown on a phone screen and captured: scaled into a 390 x 844 screen with bars around it."""
    screen = Image.new("RGB", (390, 844), (250, 250, 250))
    shown = image.copy()
    shown.thumbnail((390, 700))
    screen.paste(shown, ((390 - shown.width) // 2, 120))
    screen.paste(Image.new("RGB", (390, 60), (30, 30, 30)), (0, 0))
    return _jpeg(screen, 85)


TRANSFORMS = {
    "re-encoded (q 40)": lambda im, rng: _jpeg(im, 40),
    "half size": lambda im, rng: _jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)),
    "crop 10 %": lambda im, rng: _jpeg(_crop(im, 0.10, rng)),
    "border 5 %": lambda im, rng: _jpeg(ImageOps.expand(im, border=max(1, int(0.05 * max(im.size))),
                                                        fill=rng.choice([(0, 0, 0), (255, 255, 255)]))),
    "mirror": lambda im, rng: _jpeg(ImageOps.mirror(im)),
    "tilt 5° + crop": lambda im, rng: _jpeg(_tilt(im, rng.choice([-5, 5]))),
    "rotated 90°": lambda im, rng: _jpeg(im.rotate(90, expand=True)),
    "screenshot": lambda im, rng: _screenshot(im),
}


def signals(images: list[Image.Image], bundle: Bundle) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """pHashes, mirrored pHashes and pHashes without a uniform border (the pHash when there is none to trim), as
    64-bit integers, and unit-length model features of each image."""
    phash = np.array([int(PHash().hash_image(im).hex, 16) for im in images], dtype=np.uint64)
    mirrored = np.array([int(MirroredPHash().hash_image(im).hex, 16) for im in images], dtype=np.uint64)
    trimmed = np.array([int(PHash().hash_image(trim_uniform_border(im) or im).hex, 16) for im in images],
                       dtype=np.uint64)
    features = []
    for start in range(0, len(images), 32):
        batch = np.stack([prepare_image(im, bundle.input_size) for im in images[start:start + 32]])
        features.append(bundle.model.run(batch)[1])
    return phash, mirrored, trimmed, unit_rows(np.concatenate(features))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between 64-bit hashes, broadcast."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int16)


def methods(distance: np.ndarray, mirrored_distance: np.ndarray, trimmed_distance: np.ndarray,
            cosine: np.ndarray) -> dict[str, np.ndarray]:
    """Each method's verdict (True = near duplicates) for pairs given their signals."""
    mirror = np.minimum(distance, mirrored_distance)
    nearest = np.minimum(mirror, trimmed_distance)
    found = {"phash": distance <= DISTANCE, "phash+mirror": mirror <= DISTANCE,
             "phash+mirror+border": nearest <= DISTANCE}
    for c in COSINES:
        found[f"features >= {c:.2f}"] = cosine >= c
    for c, d in COMBINED:
        found[f"combined C {c:.2f}, D {d}"] = (nearest <= DISTANCE) | ((cosine >= c) & (nearest <= d))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="a run folder (placeid train --out)")
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    bundle = Bundle.load(args.bundle)
    paths = sorted((Settings.from_env().world30_dir / "images").glob("*/*.jpg"))
    photos = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in tqdm(paths, desc="read", unit="img")]
    phash, mirrored, trimmed, features = signals(photos, bundle)

    # False matches: every pair of distinct photos (not one near-duplicate group).
    grouped = [Example(str(p), "", "", format(int(h), "016x")) for p, h in zip(paths, phash)]
    group_near_duplicates(grouped, DISTANCE)
    groups = np.array([e.group for e in grouped])
    upper = np.triu_indices(len(photos), k=1)
    distinct = groups[upper[0]] != groups[upper[1]]
    pairs = (upper[0][distinct], upper[1][distinct])
    pair_found = methods(hamming(phash[pairs[0]], phash[pairs[1]]),
                         np.minimum(hamming(mirrored[pairs[0]], phash[pairs[1]]),
                                    hamming(phash[pairs[0]], mirrored[pairs[1]])),
                         np.minimum(hamming(trimmed[pairs[0]], phash[pairs[1]]),
                                    hamming(phash[pairs[0]], trimmed[pairs[1]])),
                         np.einsum("ij,ij->i", features[pairs[0]], features[pairs[1]]))

    # Recall: edits of a sample of photos against their originals.
    rng = random.Random(args.seed)
    sample = rng.sample(range(len(photos)), args.photos)
    recall: dict[str, dict[str, float]] = {}
    for name, transform in TRANSFORMS.items():
        edited = [transform(photos[i], rng) for i in tqdm(sample, desc=name, unit="img")]
        e_phash, e_mirrored, e_trimmed, e_features = signals(edited, bundle)
        found = methods(hamming(e_phash, phash[sample]), hamming(e_mirrored, phash[sample]),
                        hamming(e_trimmed, phash[sample]), np.einsum("ij,ij->i", e_features, features[sample]))
        recall[name] = {method: round(float(hits.mean()), 4) for method, hits in found.items()}
    results = {
        "photos": len(photos), "edited_photos": args.photos, "bundle": bundle.version, "distance": DISTANCE,
        "distinct_pairs": int(distinct.sum()),
        "false_matches": {method: int(hits.sum()) for method, hits in pair_found.items()},
        "false_match_rate": {method: float(hits.mean()) for method, hits in pair_found.items()},
        "recall": recall, "seconds": round(time.monotonic() - started, 1),
    }
    path = save("neardup", results)
    table = Table(title=f"near duplicates: recall on {args.photos} edited world30 photos; false matches over "
                        f"{results['distinct_pairs']:,} distinct pairs")
    table.add_column("method")
    for name in TRANSFORMS:
        table.add_column(name)
    table.add_column("false matches")
    for method in pair_found:
        table.add_row(method, *[f"{recall[t][method]:.0%}" for t in TRANSFORMS],
                      f"{results['false_matches'][method]:,} ({results['false_match_rate'][method] * 1e4:.2f} / 10k)")
    console.print(table)
    console.print(f"saved {path}")


if __name__ == "__main__":
    main()
