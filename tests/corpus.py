"""A corpus of bad and odd inputs, each with the outcome ingestion must give. Built from real photos where
a photo is needed, generated where the oddity is the point."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pillow_heif import register_heif_opener

register_heif_opener()  # lets Pillow write the HEIC case


@dataclass(frozen=True)
class Case:
    name: str  # object name under raw/<place>/
    data: bytes
    status: str  # expected record status
    reason: str | None = None  # substring of the expected reason
    format: str | None = None  # expected detected format
    check: str | None = None  # name of an extra check on the curated copy


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_rgb16(photo: Image.Image) -> bytes:
    """A 16-bit-per-channel RGB PNG of ``photo`` (Pillow cannot write one)."""
    samples = np.asarray(photo.convert("RGB"), dtype=">u2") * 257
    rows = b"".join(b"\x00" + row.tobytes() for row in samples)
    header = struct.pack(">IIBBBBB", photo.width, photo.height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows)) + \
        _png_chunk(b"IEND", b"")


def png_bomb(side: int = 20000) -> bytes:
    """A tiny file that claims side x side pixels (400 M): a decompression bomb."""
    return _save(Image.new("1", (side, side)), "PNG", optimize=True)


def oriented_jpeg(photo: Image.Image, orientation: int) -> bytes:
    """A JPEG whose EXIF orientation tag says how to turn the stored pixels upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(marked(photo), "JPEG", exif=exif.tobytes(), quality=92)


def marked(photo: Image.Image) -> Image.Image:
    """A copy with a pure red square in the top-left corner, to check orientation handling."""
    copy = photo.convert("RGB").copy()
    copy.paste((255, 0, 0), (0, 0, copy.width // 5, copy.height // 5))
    return copy


def build_cases(photo_paths: list[Path]) -> list[Case]:
    """The corpus; ``photo_paths`` are distinct real photos (at least 20), one per accepted case, so no
    accepted case is a near duplicate of another."""
    photos = iter(Image.open(path).convert("RGB") for path in photo_paths)
    photo = next(photos)
    jpeg = photo_paths[0].read_bytes()
    huge_exif = Image.Exif()
    huge_exif[0x010E] = "x" * 60000  # ImageDescription: a ~60 KB APP1 block
    # Palette image with a transparent left half: colours from a real photo, index 0 made transparent.
    palette = next(photos).quantize(64)
    palette.paste(0, (0, 0, palette.width // 2, palette.height))
    gif_frames = [Image.new("P", (64, 64), i) for i in range(3)]
    grey = np.asarray(next(photos).convert("L"), dtype=np.uint16)
    grey16 = Image.fromarray(grey * 257)  # the same picture in 16 bits per sample
    colour = next(photos)
    broken_crc = bytearray(_save(photo.resize((64, 64)), "PNG"))
    broken_crc[-20] ^= 0xFF  # inside IDAT: the CRC check fails
    cases = [
        Case("zero-bytes.jpg", b"", "rejected", "empty file"),
        Case("text.jpg", b"this is not a photo, just text\n" * 20, "rejected", "not an image"),
        Case("page.png", b"<!doctype html><html><body>404 not found</body></html>", "rejected", "not an image"),
        Case("truncated.jpg", jpeg[: len(jpeg) // 2], "rejected", "truncated"),
        Case("bomb.png", png_bomb(), "rejected", "decompression bomb"),
        Case("line.png", _save(Image.new("RGB", (100000, 1), "white"), "PNG"), "rejected", "absurd dimensions"),
        Case("tiny.png", _save(Image.new("RGB", (8, 8), "white"), "PNG"), "rejected", "too small"),
        Case("animated.gif", _save(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:]),
             "rejected", "format GIF is not accepted"),
        Case("still.gif", _save(photo, "GIF"), "rejected", "format GIF is not accepted"),
        Case("bitmap.bmp", _save(photo, "BMP"), "rejected", "format BMP is not accepted"),
        Case("scan.tif", _save(photo, "TIFF"), "rejected", "format TIFF is not accepted"),
        Case("bad-crc.png", bytes(broken_crc), "rejected", "corrupt"),
        Case("cmyk.jpg", _save(Image.new("CMYK", (120, 90), (0, 255, 255, 0)), "JPEG"), "accepted",
             format="JPEG", check="red"),
        Case("grey16.png", _save(grey16, "PNG"), "accepted", format="PNG", check="grey16"),
        Case("rgb16.png", png_rgb16(colour), "accepted", format="PNG", check="rgb16"),
        Case("palette-alpha.png", _save(palette, "PNG", transparency=0), "accepted", format="PNG",
             check="white-left"),
        Case("alpha.png", _save(next(photos).convert("RGBA"), "PNG"), "accepted", format="PNG"),
        Case("grey-alpha.png", _save(next(photos).convert("LA"), "PNG"), "accepted", format="PNG"),
        Case("one-bit.png", _save(next(photos).convert("1"), "PNG"), "accepted", format="PNG"),
        Case("webp-named.jpg", _save(next(photos), "WEBP", quality=80), "accepted", format="WEBP"),
        Case("stereo.mpo", _save(next(photos), "MPO", save_all=True, append_images=[photo]), "accepted",
             format="MPO"),
        Case("huge-exif.jpg", _save(next(photos), "JPEG", exif=huge_exif.tobytes()), "accepted", format="JPEG",
             check="no-exif"),
        Case("phone.heic", _save(next(photos), "HEIF"), "accepted", format="HEIF"),
    ]
    for orientation in range(2, 9):
        image = next(photos).resize((160, 120))
        cases.append(Case(f"orientation-{orientation}.jpg", oriented_jpeg(image, orientation), "accepted",
                          format="JPEG", check=f"orientation-{orientation}"))
    return cases, {"grey16": grey, "rgb16": np.asarray(colour)}
