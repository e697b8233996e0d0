"""Content and perceptual hashes. One template (:class:`PerceptualHasher`), small subclasses."""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from importlib.metadata import version

import imagehash
import numpy as np
import pywt  # noqa: F401 - imagehash imports these on first use; imported here, at start, so that the
import scipy.fftpack  # noqa: F401 - first photo's memory is its own (what the decode budget reserves for it)
from PIL import Image

IMAGEHASH_VERSION = version("ImageHash")


@dataclass(frozen=True)
class HashValue:
    """A hash with the algorithm and size that produced it, so stored values stay interpretable."""

    algorithm: str
    bits: int
    hex: str
    library: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def as_int(self) -> int:
        return int(self.hex, 16)


def sha256_hash(data: bytes) -> HashValue:
    """SHA-256 of raw bytes."""
    return HashValue("sha256", 256, hashlib.sha256(data).hexdigest(), "hashlib")


def hamming_distance(first_hex: str, second_hex: str) -> int:
    """Number of differing bits between two hex-encoded hashes of equal length."""
    if len(first_hex) != len(second_hex):
        raise ValueError(f"hashes differ in length: {len(first_hex)} vs {len(second_hex)} hex digits")
    return (int(first_hex, 16) ^ int(second_hex, 16)).bit_count()


#: whash scales (power of two <= the shorter side) from which whash is computed in integers (below).
WHASH_INTEGER_FROM_SCALE = 2048
#: Bytes imagehash's own whash holds per pixel of its scale (float64 arrays; measured 161 MiB at 2048).
WHASH_FLOAT_BYTES = 40


def whash_value(grey: Image.Image, hash_size: int = 8) -> imagehash.ImageHash:
    """imagehash.whash (Haar, max-level LL removed), from its scale WHASH_INTEGER_FROM_SCALE on without its
    float64 arrays. Its bits are each Haar LL coefficient at level log2(S / hash_size) against their median,
    after the image mean is removed; an LL coefficient is its block's pixel sum / 2^k, so neither the mean nor
    the scale changes the order, and the bits are the block sums of the same LANCZOS-resized greyscale image
    against their median, in exact integers. When the two middle sums differ, every comparison is at least one
    grey level from the median and imagehash's float result is the same; when they tie (flat areas) imagehash's
    bits come from float rounding: its own computation is used up to scale 2048 (161 MiB), above that the
    integer answer (no bit above a tied median)."""
    scale = max(2 ** int(math.log2(min(grey.size))), hash_size)
    if scale < WHASH_INTEGER_FROM_SCALE:
        return imagehash.whash(grey, hash_size=hash_size)
    small = grey.convert("L").resize((scale, scale), Image.Resampling.LANCZOS)
    block = scale // hash_size
    sums = np.asarray(small).reshape(hash_size, block, hash_size, block).sum(axis=(1, 3), dtype=np.int64)
    middle = np.sort(sums, axis=None)[sums.size // 2 - 1: sums.size // 2 + 1]
    if middle[0] == middle[1] and scale <= WHASH_INTEGER_FROM_SCALE:
        return imagehash.whash(small, hash_size=hash_size)  # same input: its resize to its own size is a copy
    return imagehash.ImageHash(sums > np.median(sums))


def _grey(image: Image.Image) -> Image.Image:
    return image if image.mode == "L" else image.convert("L")


class PerceptualHasher(ABC):
    """Template for perceptual hashes of a square ``hash_size`` grid (``hash_size**2`` bits)."""

    algorithm: str = ""
    min_hash_size = 2
    max_hash_size = 32

    def __init__(self, hash_size: int = 8):
        if not isinstance(hash_size, int) or not self.min_hash_size <= hash_size <= self.max_hash_size:
            raise ValueError(
                f"{self.algorithm}: hash_size must be an integer within "
                f"{self.min_hash_size}..{self.max_hash_size}, got {hash_size!r}"
            )
        self.hash_size = hash_size

    def hash_image(self, image: Image.Image) -> HashValue:
        """Hash an RGB (or any-mode) Pillow image."""
        value = self._compute(image)
        return HashValue(self.algorithm, self.hash_size**2, str(value), f"imagehash {IMAGEHASH_VERSION}")

    @abstractmethod
    def _compute(self, image: Image.Image) -> imagehash.ImageHash: ...


class PHash(PerceptualHasher):
    """DCT-based hash; the one the near-duplicate index uses."""

    algorithm = "phash"

    def _grid(self, image: Image.Image) -> Image.Image:
        # imagehash's own first step (greyscale, LANCZOS to its 4n x 4n grid) done here without copying a full-size
        # greyscale image; its resize of the grid to the same size is then a copy: the same value.
        return _grey(image).resize((4 * self.hash_size, 4 * self.hash_size), Image.Resampling.LANCZOS)

    def _compute(self, image):
        return imagehash.phash(self._grid(image), hash_size=self.hash_size)


class MirroredPHash(PHash):
    """The pHash of the image's mirror image (left-right), from the same grid: a mirrored copy of a photo has the
    photo's pHash as its own mirrored pHash, so one index of pHashes finds both."""

    algorithm = "phash_mirror"

    def _compute(self, image):
        return imagehash.phash(self._grid(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT), hash_size=self.hash_size)


class DHash(PerceptualHasher):
    """Gradient (difference) hash."""

    algorithm = "dhash"

    def _compute(self, image):
        # as PHash: imagehash's first step, to its (n + 1) x n grid, without a full-size greyscale copy
        grid = _grey(image).resize((self.hash_size + 1, self.hash_size), Image.Resampling.LANCZOS)
        return imagehash.dhash(grid, hash_size=self.hash_size)


class WHash(PerceptualHasher):
    """Haar wavelet hash; the size must be a power of two."""

    algorithm = "whash"

    def __init__(self, hash_size: int = 8):
        super().__init__(hash_size)
        if hash_size & (hash_size - 1):
            raise ValueError(f"whash: hash_size must be a power of two, got {hash_size}")

    def _compute(self, image):
        return whash_value(_grey(image), hash_size=self.hash_size)


#: A border is trimmed when it is at least this share of the side it is on...
BORDER_MIN_SHARE = 0.01
#: ... and every grey level in it is within this of the corner's.
BORDER_TOLERANCE = 12


def trim_uniform_border(image: Image.Image) -> Image.Image | None:
    """``image`` without the uniform border (one colour, the top-left corner's, on any side) that a re-post or a
    screenshot adds, or None when it has none worth trimming."""
    grey = _grey(image)
    corner = grey.getpixel((0, 0))
    content = grey.point(lambda value: 255 if abs(value - corner) > BORDER_TOLERANCE else 0).getbbox()
    if content is None:
        return None  # one colour: nothing but border
    left, top, right, bottom = content
    width, height = grey.size
    cut = max(left / width, top / height, (width - right) / width, (height - bottom) / height)
    if cut < BORDER_MIN_SHARE or (right - left) < width / 4 or (bottom - top) < height / 4:
        return None
    return image.crop(content)


PERCEPTUAL_HASHERS: tuple[PerceptualHasher, ...] = (PHash(), MirroredPHash(), DHash(), WHash())


def perceptual_hashes(image: Image.Image) -> dict[str, HashValue]:
    """All perceptual hashes placeid records, keyed by algorithm (each starts from the greyscale image, made
    once here; pass a greyscale image to skip even that)."""
    grey = _grey(image)
    return {hasher.algorithm: hasher.hash_image(grey) for hasher in PERCEPTUAL_HASHERS}
