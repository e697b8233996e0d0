"""Content and perceptual hashes. One template (:class:`PerceptualHasher`), small subclasses."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from importlib.metadata import version

import imagehash
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

    def _compute(self, image):
        return imagehash.phash(image, hash_size=self.hash_size)


class DHash(PerceptualHasher):
    """Gradient (difference) hash."""

    algorithm = "dhash"

    def _compute(self, image):
        return imagehash.dhash(image, hash_size=self.hash_size)


class WHash(PerceptualHasher):
    """Haar wavelet hash; the size must be a power of two."""

    algorithm = "whash"

    def __init__(self, hash_size: int = 8):
        super().__init__(hash_size)
        if hash_size & (hash_size - 1):
            raise ValueError(f"whash: hash_size must be a power of two, got {hash_size}")

    def _compute(self, image):
        return imagehash.whash(image, hash_size=self.hash_size)


PERCEPTUAL_HASHERS: tuple[PerceptualHasher, ...] = (PHash(), DHash(), WHash())


def perceptual_hashes(image: Image.Image) -> dict[str, HashValue]:
    """All perceptual hashes placeid records, keyed by algorithm."""
    return {hasher.algorithm: hasher.hash_image(image) for hasher in PERCEPTUAL_HASHERS}
