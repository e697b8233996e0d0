"""Decode memory: the process-wide budget bounds concurrent decodes, strip conversions give the pixels the
whole-image ones gave, and their temporaries stay bounded (measured in a fresh process)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from placeid_edge import imaging
from placeid_edge.errors import TooLarge, TransientError
from placeid.hashing import hamming_distance, perceptual_hashes
from placeid.ingest import decode_and_hash
from placeid_edge.imaging import (
    MemoryBudget,
    ValidationLimits,
    curated_image,
    decode_image,
    pixel_bytes,
    pixel_sha256,
    to_rgb,
)
from placeid_edge.preprocess import prepare_estimate, prepare_image

REPO = Path(__file__).resolve().parent.parent


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def _world30_photo(data_dir: Path, index: int = 0) -> Path:
    return sorted((data_dir / "world30" / "images" / "colosseum").glob("*.jpg"))[index]


def _old_high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """The whole-image float64 conversion the strip version replaced (kept here as the reference)."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low or 1.0) * 255.0
    else:
        full_scale = 65535.0 if values.max() <= 65535 else float(values.max())
        scaled = values / full_scale * 255.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8)).convert("RGB")


@pytest.fixture()
def budget():
    """The process-wide budget, restored afterwards."""
    saved = (imaging.decode_budget.limit_bytes, imaging.decode_budget.wait_s)
    yield imaging.decode_budget
    imaging.decode_budget.configure(*saved)


# -- the budget ------------------------------------------------------------------------------------------------
def test_the_budget_bounds_concurrent_decodes_of_real_images(budget, data_dir):
    """8 threads decode real 5 MP PNGs through prepare_image; the budget fits two at a time: never more than
    two estimates are reserved at once, every image is answered, and both slots were used."""
    photo = Image.open(_world30_photo(data_dir)).convert("RGB").resize((2600, 1950))
    data = _png(photo)
    one = prepare_estimate(imaging.open_image(data), 96)
    budget.configure(int(2.5 * one), wait_s=60)
    budget.reset_peak()
    inside, most, lock, results = [0], [0], threading.Lock(), []
    original = budget.reserve

    def counting_reserve(nbytes, what="image"):  # counts decodes inside their reservation
        context = original(nbytes, what)

        class Counted:
            def __enter__(self):
                context.__enter__()
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])

            def __exit__(self, *exc):
                with lock:
                    inside[0] -= 1
                return context.__exit__(*exc)

        return Counted()

    budget.reserve = counting_reserve
    try:
        threads = [threading.Thread(target=lambda: results.append(prepare_image(data, 96).shape)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        del budget.reserve
    assert results == [(96, 96, 3)] * 8
    assert most[0] == 2, most[0]
    assert budget.peak <= budget.limit_bytes
    assert budget.used == 0


def test_an_image_larger_than_the_whole_budget_is_refused_and_a_full_budget_times_out(budget, data_dir):
    data = _png(Image.open(_world30_photo(data_dir)).convert("RGB").resize((2600, 1950)))
    budget.configure(1 << 20, wait_s=0.2)
    with pytest.raises(TooLarge) as refused:
        prepare_image(data, 96)
    assert refused.value.http_status == 413 and "decode memory budget" in refused.value.message
    budget.configure(64 << 20, wait_s=0.2)
    with budget.reserve(60 << 20):
        began = time.monotonic()
        with pytest.raises(TransientError):  # 503: retry
            with budget.reserve(8 << 20):
                pass
        assert time.monotonic() - began >= 0.2
    with budget.reserve(8 << 20):  # room again
        pass


def test_a_standalone_budget_waits_for_room():
    gate = MemoryBudget(10, wait_s=5)
    order = []
    with gate.reserve(8):
        waiter = threading.Thread(target=lambda: (gate.reserve(8).__enter__(), order.append("second")))
        waiter.start()
        time.sleep(0.1)
        order.append("first done")
    waiter.join()
    assert order == ["first done", "second"]


# -- same pixels as before -------------------------------------------------------------------------------------
def test_16_bit_strip_conversion_gives_the_old_pixels_on_a_real_photo(data_dir):
    grey = np.asarray(Image.open(_world30_photo(data_dir)).convert("L").resize((1500, 1000)), dtype=np.uint16)
    noise = np.random.default_rng(0).integers(0, 257, grey.shape)
    cases = {"16-bit": (grey * 257 + noise).astype(np.uint16), "16-bit dark": grey * 3,
             "32-bit": grey.astype(np.int32) * 1000 - 5000, "float": grey.astype(np.float32) * 0.37 - 3}
    for name, values in cases.items():
        image = Image.fromarray(values)
        if name == "16-bit":
            image = Image.open(io.BytesIO(_png(image)))  # a real 16-bit PNG, as uploaded
            image.load()
            assert image.mode.startswith("I;16")
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(_old_high_bit_depth_to_rgb(image))), name


def test_strip_alpha_hash_and_curated_copy_match_the_whole_image_versions(data_dir):
    photo = Image.open(_world30_photo(data_dir, 1)).convert("RGB").resize((1800, 1200))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.random.default_rng(1).integers(0, 256, (1200, 1800), dtype=np.uint8)))
    whole = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    assert np.array_equal(np.asarray(to_rgb(rgba)), np.asarray(whole))
    assert pixel_sha256(photo) == hashlib.sha256(pixel_bytes(photo)).hexdigest()
    thumb = photo.copy()
    thumb.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(curated_image(photo, 1024)), np.asarray(thumb))
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(rotated, "JPEG", quality=90, exif=exif.tobytes())
    decoded = decode_image(rotated.getvalue())
    assert np.array_equal(np.asarray(decoded.rgb),
                          np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(rotated.getvalue()))).convert("RGB")))


def test_integer_whash_matches_imagehash_on_real_photos(data_dir):
    from placeid.hashing import whash_value

    for index in range(3):
        grey = Image.open(_world30_photo(data_dir, index)).convert("L").resize((2100, 2100))
        assert whash_value(grey) == imagehash.whash(grey)


# -- bounded temporaries, measured in a fresh process ----------------------------------------------------------
def test_a_16_bit_png_converts_with_bounded_temporaries(data_dir, tmp_path):
    """A 12 MP 16-bit PNG from a world30 photo: the old float64 conversion held ~5 float64 copies (~460 MiB);
    the strip one holds the 8-bit grey and RGB results and one strip."""
    grey = np.asarray(Image.open(_world30_photo(data_dir)).convert("L").resize((4000, 3000)), dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey * 257).save(path, compress_level=1)
    probe = f"""
from PIL import Image
from placeid_edge.imaging import to_rgb
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
image = Image.open({str(path)!r})
image.load()
before = hwm()
rgb = to_rgb(image)
print("mode", image.mode, rgb.mode, "grew_kib", hwm() - before)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "grew_kib" in done.stdout, done.stdout + done.stderr
    assert "mode I;16 RGB" in done.stdout
    grew_mib = int(done.stdout.split("grew_kib")[1]) / 1024
    # results: 12 MB grey + 48 MB RGB (Pillow keeps RGB in 4 bytes); strips a few MB
    assert grew_mib < 90, f"the 16-bit conversion grew the process by {grew_mib:.0f} MiB"


# -- ingest's working size --------------------------------------------------------------------------------------
LARGE_ORIGINAL = "world30-originals/forbidden-city/997b5d9d-a20f-4bd7-bbdf-4d983f3955af.jpg"  # 5255 x 3564


def _upscaled_png(data_dir: Path) -> bytes:
    """A 12 MP PNG of a real photo (no draft mode: reduced in strips after decoding)."""
    return _png(Image.open(_world30_photo(data_dir, 3)).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC))


def test_ingest_decodes_a_large_photo_at_its_working_size_with_the_same_hashes(data_dir):
    """A photo larger than ingest needs is decoded reduced (a JPEG in draft mode, a PNG box-reduced in strips),
    never below the curated side: the recorded sizes stay the file's, the perceptual hashes are those of the full
    decode (pHash within 2 bits, whash equal) and the curated copy has the same size and nearly the same pixels."""
    for data in ((data_dir / LARGE_ORIGINAL).read_bytes(), _upscaled_png(data_dir)):
        full = decode_image(data)
        curated, fields = decode_and_hash(data, ValidationLimits(), 1024)
        assert (fields["width"], fields["height"]) == full.size
        short = min(fields["hashed_size"])
        assert 1024 <= short < 2048 and short < min(full.size)
        expected = perceptual_hashes(full.rgb)
        assert hamming_distance(fields["hashes"]["phash"]["hex"], expected["phash"].hex) <= 2
        assert fields["hashes"]["whash"]["hex"] == expected["whash"].hex
        reference = curated_image(full.rgb, 1024)
        assert curated.size == reference.size
        assert np.abs(np.asarray(curated, dtype=int) - np.asarray(reference, dtype=int)).mean() < 2


def test_a_rotated_photo_reports_its_oriented_size_at_the_working_size(data_dir):
    image = Image.open(data_dir / LARGE_ORIGINAL)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    _, fields = decode_and_hash(out.getvalue(), ValidationLimits(), 1024)
    assert (fields["width"], fields["height"]) == (image.size[1], image.size[0])
    assert fields["hashed_size"][0] < fields["hashed_size"][1] and fields["exif_orientation"] == 6


def test_ingesting_a_40_mp_jpeg_stays_within_its_estimate(data_dir, tmp_path):
    """The largest JPEG the pixel limit allows, decoded and hashed as ingest does, in a fresh process: it grows by
    far less than one full-size RGB image (153 MiB), and by no more than the estimate ingest reserves for it."""
    path = tmp_path / "large.jpg"
    Image.open(_world30_photo(data_dir, 5)).convert("RGB").resize((7300, 5475)).save(path, quality=90)
    probe = f"""
from pathlib import Path
from placeid.ingest import decode_and_hash, ingest_estimate
from placeid_edge.imaging import ValidationLimits, return_freed_memory
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
return_freed_memory()  # as the ingest function does (configure_decode_budget)
data = Path({str(path)!r}).read_bytes()
estimate = ingest_estimate(data, ValidationLimits(), 1024)
before = hwm()
curated, fields = decode_and_hash(data, ValidationLimits(), 1024)
print("hashed", fields["hashed_size"], "grew_kib", hwm() - before, "estimate_kib", estimate // 1024)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "grew_kib" in done.stdout, done.stdout + done.stderr
    grew_kib = int(done.stdout.split("grew_kib")[1].split()[0])
    estimate_kib = int(done.stdout.split("estimate_kib")[1].split()[0])
    assert "hashed [1825, 1369]" in done.stdout
    assert grew_kib < 80 * 1024, f"decoding and hashing grew the process by {grew_kib / 1024:.0f} MiB"
    assert grew_kib <= estimate_kib, (grew_kib, estimate_kib)
