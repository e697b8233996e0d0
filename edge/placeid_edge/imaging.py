"""Image validation and normalisation with Pillow: the single place that opens untrusted bytes."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from placeid_edge.errors import InvalidImage, UnsupportedMediaType

try:  # HEIC/HEIF from phones, when pillow-heif is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_FORMATS = {"HEIF"}
except ImportError:  # pragma: no cover - optional dependency
    HEIF_FORMATS = set()

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a grey half-image
# Pillow's own guard raises only at 2x this; placeid checks its configured limit before decoding.
Image.MAX_IMAGE_PIXELS = None

#: Formats accepted, identified by content (Pillow's sniffing), never by file extension.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"} | HEIF_FORMATS)
_SRGB = ImageCms.createProfile("sRGB")
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ValidationLimits:
    """Bounds a decoded image must respect."""

    max_pixels: int = 40_000_000
    min_side: int = 32
    max_aspect_ratio: float = 10.0

    @classmethod
    def from_settings(cls, settings) -> "ValidationLimits":
        return cls(settings.max_pixels, settings.min_side, settings.max_aspect_ratio)


@dataclass
class DecodedImage:
    """A validated image: RGB, EXIF orientation applied, and what was learnt while decoding it."""

    rgb: Image.Image
    format: str
    source_mode: str
    source_size: tuple[int, int]
    orientation: int
    frames: int

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def sniff_format(data: bytes) -> str | None:
    """The format Pillow recognises from the bytes themselves, or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:  # noqa: BLE001 - anything unreadable simply has no format
        return None


def open_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Open a path, bytes or PIL image, reading the header only (pixels are decoded later).

    Raises :class:`UnsupportedMediaType` for content that is no image and :class:`InvalidImage` for an
    unreadable header."""
    if isinstance(source, Image.Image):
        return source
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source))
    except UnidentifiedImageError:
        raise UnsupportedMediaType("not an image: the content matches no known image format") from None
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes can break a decoder in many ways
        raise InvalidImage(f"cannot read image header: {exc}") from None


def decode_image(data: bytes, limits: ValidationLimits = ValidationLimits()) -> DecodedImage:
    """Validate and decode ``data`` into an oriented RGB image.

    Raises :class:`UnsupportedMediaType` for non-images and formats outside the allow-list, and
    :class:`InvalidImage` for empty, truncated or corrupt files, decompression bombs and absurd sizes.
    """
    if not data:
        raise InvalidImage("empty file (0 bytes)")
    img = open_image(data)
    check_header(img, limits)
    width, height = img.size
    frames = getattr(img, "n_frames", 1)
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001
        raise InvalidImage(f"corrupt or truncated {img.format} data: {exc}") from None
    orientation = _orientation(img)
    try:
        oriented = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
        oriented = img
    rgb = to_rgb(oriented)
    return DecodedImage(rgb, img.format, img.mode, (width, height), orientation, frames)


def check_header(img: Image.Image, limits: ValidationLimits) -> None:
    """Checks that need only the header: the format allow-list (:class:`UnsupportedMediaType`) and
    :func:`check_dimensions`."""
    if img.format not in ALLOWED_FORMATS:
        raise UnsupportedMediaType(
            f"format {img.format} is not accepted (allowed: {', '.join(sorted(ALLOWED_FORMATS))})"
        )
    check_dimensions(*img.size, limits)


def check_dimensions(width: int, height: int, limits: ValidationLimits) -> None:
    """Raise :class:`InvalidImage` for a decompression bomb, an absurd aspect ratio or a tiny image."""
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"decompression bomb: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{limits.max_pixels}"
        )
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise InvalidImage(
            f"absurd dimensions: {width}x{height} has an aspect ratio above {limits.max_aspect_ratio}"
        )
    if min(width, height) < limits.min_side:
        raise InvalidImage(f"image too small: {width}x{height}, the shorter side must be >= {limits.min_side}")


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001
        return 1


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB correctly (alpha over white, 16-bit scaled, CMYK via ICC)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_rgb(img)
    if mode == "CMYK" and img.info.get("icc_profile"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            return ImageCms.profileToProfile(img, source, _SRGB, outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile falls back to Pillow's plain conversion
            pass
    return img.convert("RGB")


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit (or 32-bit integer/float) greyscale to 8 bits instead of clipping at 255."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low or 1.0) * 255.0
    else:
        full_scale = 65535.0 if values.max() <= 65535 else float(values.max())
        scaled = values / full_scale * 255.0
    grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    return grey.convert("RGB")


def pixel_bytes(rgb: Image.Image) -> bytes:
    """Canonical byte form of decoded pixels (size header + raw RGB), for content hashing."""
    width, height = rgb.size
    return f"RGB:{width}x{height}:".encode() + rgb.tobytes()


def encode_curated_jpeg(rgb: Image.Image, max_side: int, quality: int) -> bytes:
    """A normalised copy: RGB JPEG, longest side at most ``max_side``, no EXIF or other metadata."""
    copy = rgb.copy()
    copy.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    copy.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()
