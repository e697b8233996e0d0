"""A corpus of bad, odd and hostile inputs, each with the outcome ingestion must give (record status and
reason) and the outcome the predict function must give (HTTP status and error code). Built from real photos
where a photo is needed, generated where the oddity is the point; every case is small on disk and in memory
(the bombs claim many pixels, they do not hold them) and the whole corpus is built in a few seconds."""

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
    http_status: int = 200  # what POST / of the predict function answers with this body
    http_code: str | None = None  # the JSON error code of that answer (None: a prediction)
    content_type: str = "image/jpeg"  # the content type a client declares for it

    def __post_init__(self):
        # A photo ingestion accepts is a photo predict answers; an error answer names its code, a prediction none.
        if (self.status == "accepted" and self.http_status != 200) or (self.http_status == 200) != (
                self.http_code is None):
            raise ValueError(f"{self.name}: inconsistent expectations {self.status} / {self.http_status} "
                             f"{self.http_code}")

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


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


def png_bomb_with_gps(side: int = 12_000) -> bytes:
    """A single-colour greyscale PNG of side x side pixels (144 Mpx by default: under Pillow's own refusal, over
    placeid's limit) whose eXIf chunk, placed before the pixels, holds a GPS position: a reader that looks at
    EXIF (or decodes anything) before checking the size pays for the pixels. Written row by row: ~150 KB."""
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (37.0, 33.0, 58.0), 3: "E", 4: (126.0, 58.0, 40.0)}
    compressor, row = zlib.compressobj(9), b"\x00" * (side + 1)  # filter byte 0 + one byte per pixel
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"eXIf", exif.tobytes()[6:]) + \
        _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_bad_header_crc(photo: Image.Image) -> bytes:
    """A PNG whose IHDR checksum is wrong."""
    data = bytearray(_save(photo, "PNG"))
    data[29] ^= 0xFF  # signature (8) + length (4) + "IHDR" (4) + header (13): the CRC's first byte
    return bytes(data)


def png_bad_zlib(photo: Image.Image) -> bytes:
    """A PNG whose chunks all check out but whose IDAT holds no valid zlib stream."""
    header = struct.pack(">IIBBBBB", photo.width, photo.height, 8, 2, 0, 0, 0)
    garbage = bytes((i * 37 + 11) % 256 for i in range(4096))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"\x78\x9c" + garbage) + \
        _png_chunk(b"IEND", b"")


def jpeg_with_malformed_exif(photo: Image.Image) -> bytes:
    """A JPEG whose EXIF block is broken: its Exif IFD points back at IFD0 (a loop), its GPS IFD points far
    outside the block, its entry count claims more entries than there are; its orientation (6) still reads."""
    entries = [struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0), struct.pack(">HHII", 0x8769, 4, 1, 8),
               struct.pack(">HHII", 0x8825, 4, 1, 0xFFFFFF)]
    ifd0 = struct.pack(">H", len(entries)) + b"".join(entries) + struct.pack(">I", 8)  # next IFD: itself
    payload = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + ifd0 + struct.pack(">H", 0x7FFF) + b"\x00" * 6
    jpeg = _save(marked(photo), "JPEG", quality=90)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def gif_html_polyglot(photo: Image.Image) -> bytes:
    """A GIF that is also an HTML page: script in its comment and after its trailer."""
    script = b"<html><body><script>alert(document.cookie)</script></body></html>"
    return _save(photo.resize((64, 48)), "GIF", comment=script) + script


SVG = b"""<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480" onload="alert(1)">
  <rect width="640" height="480" fill="red"/><script>alert(document.domain)</script>
</svg>
"""


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


def build_cases(photo_paths: list[Path]) -> tuple[list[Case], dict]:
    """The corpus and the originals its checks compare with; ``photo_paths`` are distinct real photos (at least
    20), one per accepted case, so no accepted case is a near duplicate of another."""
    photos = iter(Image.open(path).convert("RGB") for path in photo_paths)
    photo = next(photos)
    jpeg = photo_paths[0].read_bytes()
    png = _save(photo, "PNG")
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
    broken_crc[-20] ^= 0xFF  # inside IDAT: the zlib stream's checksum fails
    bad, unsupported, empty = dict(http_status=422, http_code="invalid_image"), \
        dict(http_status=415, http_code="unsupported_media_type"), dict(http_status=400, http_code="bad_request")
    cases = [
        Case("zero-bytes.jpg", b"", "rejected", "empty file", **empty),
        Case("text.jpg", b"this is not a photo, just text\n" * 20, "rejected", "not an image", **unsupported),
        Case("notes.txt", b"this is not a photo, just text\n" * 20, "rejected", "not an image", **unsupported,
             content_type="text/plain"),
        Case("page.png", b"<!doctype html><html><body>404 not found</body></html>", "rejected", "not an image",
             **unsupported, content_type="image/png"),
        Case("vector.svg", SVG, "rejected", "not an image", **unsupported, content_type="image/svg+xml"),
        Case("truncated.jpg", jpeg[: len(jpeg) // 2], "rejected", "truncated", **bad),
        Case("truncated.png", png[: len(png) * 2 // 3], "rejected", "truncated", **bad, content_type="image/png"),
        Case("bomb.png", png_bomb(), "rejected", "decompression bomb", **bad, content_type="image/png"),
        Case("bomb-gps.png", png_bomb_with_gps(), "rejected", "decompression bomb", **bad,
             content_type="image/png"),
        Case("line.png", _save(Image.new("RGB", (100000, 1), "white"), "PNG"), "rejected", "absurd dimensions",
             **bad, content_type="image/png"),
        Case("tiny.png", _save(Image.new("RGB", (8, 8), "white"), "PNG"), "rejected", "too small", **bad,
             content_type="image/png"),
        Case("animated.gif", _save(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:]),
             "rejected", "format GIF is not accepted", **unsupported, content_type="image/gif"),
        Case("still.gif", _save(photo, "GIF"), "rejected", "format GIF is not accepted", **unsupported),
        Case("polyglot.gif", gif_html_polyglot(photo), "rejected", "format GIF is not accepted", **unsupported,
             content_type="image/gif"),
        Case("bitmap.bmp", _save(photo, "BMP"), "rejected", "format BMP is not accepted", **unsupported,
             content_type="image/bmp"),
        Case("scan.tif", _save(photo, "TIFF"), "rejected", "format TIFF is not accepted", **unsupported,
             content_type="image/tiff"),
        Case("bad-crc.png", bytes(broken_crc), "rejected", "corrupt", **bad, content_type="image/png"),
        Case("bad-header-crc.png", png_bad_header_crc(photo.resize((64, 64))), "rejected", "corrupt PNG header",
             **bad, content_type="image/png"),
        Case("bad-zlib.png", png_bad_zlib(photo.resize((64, 64))), "rejected", "corrupt", **bad,
             content_type="image/png"),
        Case("cmyk.jpg", _save(Image.new("CMYK", (120, 90), (0, 255, 255, 0)), "JPEG"), "accepted",
             format="JPEG", check="red"),
        Case("grey16.png", _save(grey16, "PNG"), "accepted", format="PNG", check="grey16", content_type="image/png"),
        Case("rgb16.png", png_rgb16(colour), "accepted", format="PNG", check="rgb16", content_type="image/png"),
        Case("palette-alpha.png", _save(palette, "PNG", transparency=0), "accepted", format="PNG",
             check="white-left", content_type="image/png"),
        Case("alpha.png", _save(next(photos).convert("RGBA"), "PNG"), "accepted", format="PNG",
             content_type="image/png"),
        Case("grey-alpha.png", _save(next(photos).convert("LA"), "PNG"), "accepted", format="PNG",
             content_type="image/png"),
        Case("one-bit.png", _save(next(photos).convert("1"), "PNG"), "accepted", format="PNG",
             content_type="image/png"),
        Case("webp-named.jpg", _save(next(photos), "WEBP", quality=80), "accepted", format="WEBP"),
        Case("stereo.mpo", _save(next(photos), "MPO", save_all=True, append_images=[photo]), "accepted",
             format="MPO"),
        Case("huge-exif.jpg", _save(next(photos), "JPEG", exif=huge_exif.tobytes()), "accepted", format="JPEG",
             check="no-exif"),
        Case("phone.heic", _save(next(photos), "HEIF"), "accepted", format="HEIF", content_type="image/heic"),
        Case("bad-exif.jpg", jpeg_with_malformed_exif(next(photos).resize((160, 120))), "accepted",
             format="JPEG", check="orientation-6"),
        # 7200 x 5400 = 38.9 Mpx, just within the 40 Mpx limit: accepted (ingest decodes it at 1/4 scale, predict
        # at 1/8), and an RGBA PNG of that size, which no decode can reduce before it holds 4 bytes per pixel:
        # refused from its header, before any pixel is decoded, by both decode memory budgets.
        Case("large-40mp.jpg", _save(next(photos).resize((7200, 5400), Image.Resampling.NEAREST), "JPEG",
                                     quality=60), "accepted", format="JPEG", check="large"),
        Case("large-rgba-40mp.png", _save(Image.new("RGBA", (7200, 5400), (200, 30, 30, 128)), "PNG"), "rejected",
             "more than the decode memory budget", http_status=413, http_code="too_large", content_type="image/png"),
    ]
    for orientation in range(2, 9):
        image = next(photos).resize((160, 120))
        cases.append(Case(f"orientation-{orientation}.jpg", oriented_jpeg(image, orientation), "accepted",
                          format="JPEG", check=f"orientation-{orientation}"))
    return cases, {"grey16": grey, "rgb16": np.asarray(colour)}
