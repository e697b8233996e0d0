"""Hash values are pinned: a Pillow, numpy or imagehash upgrade that shifts them fails here, before it
silently splits the duplicate index in two."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from placeid.hashing import DHash, PHash, WHash, hamming_distance, perceptual_hashes, sha256_hash
from placeid_edge.imaging import decode_image, pixel_bytes
from placeid.neardup import band_keys, band_layout, probe_keys

PINNED_PHOTO = "world30/images/colosseum/0111beddc5528539.jpg"
PINNED = {
    "file_sha256": "0111beddc55285390cadfbc0f42efc1062827042e85f81aa95d0926a5798970b",
    "pixels_sha256": "3e6f4856d0540cef1d3a615ea704695ad0ed52183e0557edb552dde9a0642a4a",
    "phash": "b5aa6e4cb6ab4846",
    "phash_mirror": "e0ef1918e3f61d12",
    "dhash": "3f3fdf3e3c92c626",
    "whash": "ff9f3f9f0f002080",
}


def test_pinned_hash_values(data_dir):
    data = (data_dir / PINNED_PHOTO).read_bytes()
    decoded = decode_image(data)
    assert sha256_hash(data).hex == PINNED["file_sha256"]
    assert sha256_hash(pixel_bytes(decoded.rgb)).hex == PINNED["pixels_sha256"]
    hashes = perceptual_hashes(decoded.rgb)
    assert {name: value.hex for name, value in hashes.items()} == {k: PINNED[k] for k in ("phash", "phash_mirror", "dhash", "whash")}
    assert all(value.bits == 64 and value.library.startswith("imagehash ") for value in hashes.values())


@pytest.mark.parametrize("hasher, size", [(PHash, 1), (PHash, 33), (DHash, 0), (WHash, 6), (PHash, "8")])
def test_hash_size_bounds_are_checked(hasher, size):
    with pytest.raises(ValueError):
        hasher(size)


def test_hash_size_sets_bit_count(data_dir):
    image = Image.open(data_dir / PINNED_PHOTO)
    value = PHash(16).hash_image(image)
    assert value.bits == 256 and len(value.hex) == 64


def test_hamming_distance():
    assert hamming_distance("ff00", "ff00") == 0
    assert hamming_distance("ff00", "00ff") == 16
    with pytest.raises(ValueError):
        hamming_distance("ff", "ffff")


@pytest.mark.parametrize("distance", [0, 1, 2, 6, 8, 12, 29])
def test_probes_reach_every_hash_within_distance(distance):
    """Generalised pigeonhole: the lookup probes of a hash include a stored key of every hash within
    ``distance`` (including those exactly at the distance), and miss none because of band boundaries."""
    rng = random.Random(distance)
    for trial in range(400):
        first = rng.getrandbits(64)
        flips = rng.sample(range(64), distance if trial % 2 else rng.randint(0, distance))
        second = first
        for bit in flips:
            second ^= 1 << bit
        probes = set(probe_keys(f"{first:016x}", distance))
        assert probes & set(band_keys(f"{second:016x}", distance))


def test_band_layout_for_the_default_distance():
    bands, radius, widths = band_layout(8)
    assert (bands, radius, sum(widths)) == (5, 1, 64)
    assert len(probe_keys("0" * 16, 8)) == sum(w + 1 for w in widths) == 69


def test_band_keys_reject_wrong_sizes():
    with pytest.raises(ValueError):
        band_keys("ff", 4)
    with pytest.raises(ValueError):
        band_keys("0" * 16, 64)


def test_training_from_a_folder_hashes_photos_as_ingest_does(data_dir):
    """One hashing path: an EXIF-rotated photo read from a folder gets the pHash ingest records for it (oriented
    pixels, not the stored ones), so offline training and ingest group near duplicates alike."""
    from placeid.config import Settings
    from placeid.ingest import decode_and_hash
    from placeid_edge.imaging import ValidationLimits
    from training.dataset import _phash

    image = Image.open(data_dir / PINNED_PHOTO)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    data = out.getvalue()
    _, fields = decode_and_hash(data, ValidationLimits(), Settings().curated_max_side)
    assert _phash(data) == fields["hashes"]["phash"]["hex"]
    assert hamming_distance(_phash(data), PHash().hash_image(image).hex) > 8  # the stored pixels' hash differs


def test_a_mirrored_copy_has_the_photos_phash_as_its_mirrored_phash(world30_photos):
    """The mirrored pHash of a mirror image is the photo's own pHash (so one index of pHashes finds mirrored
    copies), while a photo and its mirror image are far apart."""
    from PIL import ImageOps

    from placeid.hashing import MirroredPHash

    for path in [paths[3] for paths in world30_photos.values()][:10]:
        photo = Image.open(path).convert("RGB")
        assert MirroredPHash().hash_image(ImageOps.mirror(photo)).hex == PHash().hash_image(photo).hex
        assert hamming_distance(PHash().hash_image(photo).hex, MirroredPHash().hash_image(photo).hex) > 16


def test_a_framed_copy_without_its_border_has_the_photos_phash(world30_photos):
    """A uniform frame (white or black, 5 % of the side) is trimmed and the rest hashes as the photo does; a photo
    with no such border, and an image of one colour, have nothing to trim."""
    from PIL import ImageOps

    from placeid.hashing import trim_uniform_border

    for index, path in enumerate([paths[4] for paths in world30_photos.values()][:10]):
        photo = Image.open(path).convert("RGB")
        framed = ImageOps.expand(photo, border=max(photo.size) // 20, fill=[(255, 255, 255), (0, 0, 0)][index % 2])
        trimmed = trim_uniform_border(framed)
        assert trimmed is not None  # (a photo's own edge of the frame's colour may go with it)
        assert all(abs(a - b) <= 0.03 * b for a, b in zip(trimmed.size, photo.size)), (path.name, trimmed.size)
        assert hamming_distance(PHash().hash_image(trimmed).hex, PHash().hash_image(photo).hex) <= 8  # the index's d
    assert trim_uniform_border(Image.new("RGB", (300, 200), (10, 120, 200))) is None
    noisy = Image.effect_noise((300, 200), 60).convert("RGB")
    assert trim_uniform_border(noisy) is None
