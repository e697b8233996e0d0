"""Image validation and normalisation with Pillow: the single place that opens untrusted bytes."""

from __future__ import annotations

import hashlib
import io
import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from placeid_edge.errors import InvalidImage, TooLarge, TransientError, UnsupportedMediaType

try:  # HEIC/HEIF from phones, when pillow-heif is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_FORMATS = {"HEIF"}
except ImportError:  # pragma: no cover - optional dependency
    HEIF_FORMATS = set()

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a grey half-image
#: Pillow's own decompression-bomb guard, a backstop behind placeid's configured limit (checked from the header
#: before anything is decoded): Pillow warns above it and refuses twice as many pixels.
BACKSTOP_MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = BACKSTOP_MAX_PIXELS

#: Formats accepted, identified by content (Pillow's sniffing), never by file extension.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"} | HEIF_FORMATS)
_SRGB = ImageCms.createProfile("sRGB")
_WHITE = (255, 255, 255)


# -- decode memory budget -----------------------------------------------------------------------------------------

#: Bytes per pixel Pillow holds for each mode once decoded (RGB is stored as 4 bytes, RGBX).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "LA": 4, "La": 4, "PA": 4,
               "RGB": 4, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "YCbCr": 4, "LAB": 4, "HSV": 4, "I": 4,
               "F": 4}
#: Rows converted at a time by the strip conversions (16-bit, float, alpha): bounded temporaries.
STRIP_ROWS = 64


def estimate_decode_bytes(width: int, height: int, mode: str, *, converted: bool = True, copies: int = 1,
                          strips: bool = True) -> int:
    """Memory one decode needs at its peak, from the header: the decoded pixels (``copies`` of them) plus the
    8-bit RGB result when the mode needs a conversion (``converted``), plus the strips of a strip conversion."""
    pixels = width * height
    decoded = pixels * _MODE_BYTES.get(mode, 4) * copies
    rgb = pixels * 4 if converted and mode != "RGB" else 0
    strip_bytes = width * STRIP_ROWS * 8 * 4 if strips and mode not in ("RGB", "L", "P") else 0
    return decoded + rgb + strip_bytes


class MemoryBudget:
    """A process-wide bound on the memory some kind of work in flight may hold: each piece of work reserves its
    estimate before it allocates and gives it back when the memory is gone. Work that does not fit waits up to
    ``wait_s`` for others to finish (then :class:`TransientError`, 503: retry); work that alone is larger than
    the budget is refused (:class:`TooLarge`, 413). ``limit_bytes`` 0 disables the bound. ``name`` and
    ``setting`` say in messages which budget it is and how to change it."""

    def __init__(self, limit_bytes: int, wait_s: float = 10.0, *, name: str = "decode memory budget",
                 setting: str = "PLACEID_DECODE_BUDGET_MB"):
        self.limit_bytes = int(limit_bytes)
        self.wait_s = float(wait_s)
        self.name, self.setting = name, setting
        self._used = 0
        self._peak = 0
        self._cond = threading.Condition()

    def configure(self, limit_bytes: int, wait_s: float | None = None) -> None:
        with self._cond:
            self.limit_bytes = int(limit_bytes)
            if wait_s is not None:
                self.wait_s = float(wait_s)
            self._cond.notify_all()

    @property
    def used(self) -> int:
        return self._used

    @property
    def peak(self) -> int:
        """The most bytes reserved at once since the process started (or :meth:`reset_peak`)."""
        return self._peak

    def reset_peak(self) -> None:
        with self._cond:
            self._peak = self._used

    @contextmanager
    def reserve(self, nbytes: int, what: str = "image"):
        nbytes = max(int(nbytes), 0)
        limit = self.limit_bytes
        if limit <= 0:
            yield
            return
        if nbytes > limit:
            raise TooLarge(f"{what} needs about {nbytes / 2**20:.0f} MiB, more than the {self.name} of "
                           f"{limit / 2**20:.0f} MiB ({self.setting})")
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self._used + nbytes > self.limit_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransientError(f"busy: the {self.name} ({self.limit_bytes / 2**20:.0f} MiB) "
                                         f"stayed full for {self.wait_s:g} s; retry")
                self._cond.wait(left)
            self._used += nbytes
            self._peak = max(self._peak, self._used)
        try:
            yield
        finally:
            with self._cond:
                self._used -= nbytes
                self._cond.notify_all()


#: Allocations from this size up get their own memory map, returned to the system when freed (glibc's default
#: raises this threshold to 32 MiB after the first large free, and then a decoded image's memory stays in the
#: process's heaps, one per thread: measured 1.3 GiB after 8 threads of 40 MP decodes that never held more than
#: 172 MiB at once). PLACEID_MMAP_THRESHOLD_BYTES overrides it; 0 leaves glibc's default.
MMAP_THRESHOLD_BYTES = 1 << 20
#: glibc's malloc arenas (unless MALLOC_ARENA_MAX is set): by default up to 8 per core, each keeping the freed
#: small blocks of the threads that used it; 8 request threads measured 17 MiB more peak RSS with the default.
MALLOC_ARENAS = 2


def return_freed_memory(threshold: int | None = None) -> bool:
    """Make glibc hand freed image buffers back (mallopt M_MMAP_THRESHOLD), so a decode budget bounds the
    resident size and not only what is in use, and share MALLOC_ARENAS arenas among the threads (M_ARENA_MAX)
    unless MALLOC_ARENA_MAX says otherwise; True if set. Linux glibc only; elsewhere nothing happens."""
    threshold = int(_env_float("PLACEID_MMAP_THRESHOLD_BYTES", MMAP_THRESHOLD_BYTES)) if threshold is None else threshold
    if threshold <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if "MALLOC_ARENA_MAX" not in os.environ:
            libc.mallopt(-8, MALLOC_ARENAS)  # M_ARENA_MAX: arenas made from now on
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


#: The budgets of this process: ``decode_budget``, shared by every decode in it (predict's requests, ingest's
#: events), and ``body_budget``, shared by the encoded bytes they hold (request bodies, downloaded objects). The
#: edge package starts unbounded unless PLACEID_DECODE_BUDGET_MB / PLACEID_BODY_BUDGET_MB are set (MiB; 0 =
#: unbounded here); placeid's services set them from their settings (configure_decode_budget, which also calls
#: return_freed_memory). A body is reserved before its decode, never the other way round: no cycle, no deadlock.
DEFAULT_DECODE_WAIT_S = 10.0
decode_budget = MemoryBudget(int(_env_float("PLACEID_DECODE_BUDGET_MB", 0) * 2**20),
                             _env_float("PLACEID_DECODE_WAIT_S", DEFAULT_DECODE_WAIT_S))
body_budget = MemoryBudget(int(_env_float("PLACEID_BODY_BUDGET_MB", 0) * 2**20),
                           _env_float("PLACEID_DECODE_WAIT_S", DEFAULT_DECODE_WAIT_S),
                           name="memory budget for request bodies and downloads", setting="PLACEID_BODY_BUDGET_MB")
if decode_budget.limit_bytes > 0 or body_budget.limit_bytes > 0:
    return_freed_memory()


def configure_decode_budget(budget_mb: float, wait_s: float | None = None, *, auto_bytes: int = 0,
                            body_mb: float = 0.0, body_auto_bytes: int = 0) -> MemoryBudget:
    """Set the process-wide budgets: decodes ``budget_mb`` MiB, or when it is 0, ``auto_bytes`` (what the caller's
    pipeline needs for the images its limits allow); bodies ``body_mb`` MiB, or ``body_auto_bytes``; and how long
    work waits for room. Also makes freed image memory go back to the system (:func:`return_freed_memory`),
    without which a budget would bound what is in use but not the resident size. Returns the decode budget."""
    return_freed_memory()
    decode_budget.configure(int(budget_mb * 2**20) if budget_mb > 0 else int(auto_bytes), wait_s)
    body_budget.configure(int(body_mb * 2**20) if body_mb > 0 else int(body_auto_bytes), wait_s)
    return decode_budget


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
        """The decoded RGB image's size (the working size when it was decoded reduced)."""
        return self.rgb.size

    @property
    def oriented_source_size(self) -> tuple[int, int]:
        """The file's own size as it is seen once the EXIF orientation is applied."""
        width, height = self.source_size
        return (height, width) if self.orientation in (5, 6, 7, 8) else (width, height)


def sniff_format(data: bytes) -> str | None:
    """The format Pillow recognises from the bytes themselves, or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:  # noqa: BLE001 - anything unreadable simply has no format
        return None


#: Magic numbers of the accepted formats: content that starts with one but does not open is corrupt (422).
_SIGNATURES = (
    ("PNG", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    ("JPEG", lambda head: head.startswith(b"\xff\xd8\xff")),
    ("WEBP", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP"),
    ("HEIF", lambda head: head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc")),
)


def open_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Open a path, bytes or PIL image, reading the header only (pixels are decoded later).

    Raises :class:`UnsupportedMediaType` for content that is no image and :class:`InvalidImage` for an
    unreadable header."""
    if isinstance(source, Image.Image):
        return source
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source))
    except UnidentifiedImageError:
        head = bytes(source[:16]) if isinstance(source, (bytes, bytearray)) else b""
        claimed = next((name for name, signature in _SIGNATURES if signature(head)), None)
        if claimed:  # it says it is an accepted format, but its header is broken: corrupt, not foreign
            raise InvalidImage(f"corrupt {claimed} header: Pillow cannot read it") from None
        raise UnsupportedMediaType("not an image: the content matches no known image format") from None
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes can break a decoder in many ways
        raise InvalidImage(f"cannot read image header: {exc}") from None


def decode_image(data: bytes, limits: ValidationLimits = ValidationLimits(), *, keep_side: int = 0) -> DecodedImage:
    """Validate and decode ``data`` into an oriented RGB image.

    ``keep_side`` > 0 decodes a large image at a working size instead of in full (see :func:`plan_reduction`):
    a JPEG in draft mode, another format above REDUCE_ABOVE_PIXELS reduced in strips right after decoding,
    never below ``keep_side`` on the shorter side. ``source_size`` keeps the file's own size.

    Raises :class:`UnsupportedMediaType` for non-images and formats outside the allow-list, and
    :class:`InvalidImage` for empty, truncated or corrupt files, decompression bombs and absurd sizes.
    """
    if not data:
        raise InvalidImage("empty file (0 bytes)")
    img = open_image(data)
    check_header(img, limits)
    width, height = img.size
    frames = getattr(img, "n_frames", 1)
    factor = plan_reduction(img, keep_side)
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001
        raise InvalidImage(f"corrupt or truncated {img.format} data: {exc}") from None
    orientation = _orientation(img)
    source_mode, image_format = img.mode, img.format
    if factor > 1:
        try:
            reduced = keep_orientation(reduce_in_strips(img, factor), img)
        except (OSError, ValueError) as exc:
            raise InvalidImage(f"cannot decode image: {exc}") from None
        img.close()
        img = reduced
    # Colour conversion first, then the orientation (they commute, pixel for pixel): the decoded source is
    # dropped before a rotation copies the RGB result, so at most two full-size images exist at once.
    rgb = to_rgb(img)
    if rgb is not img:
        img.close()
    del img
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        rgb = rgb.transpose(method)
    return DecodedImage(rgb, image_format, source_mode, (width, height), orientation, frames)


# -- decoding at a working size ------------------------------------------------------------------------------------

#: Formats Pillow can decode at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4, 1/8).
DRAFT_FORMATS = ("JPEG", "MPO")
#: Other images above this many pixels may be reduced (box average, Image.reduce, in row strips) right after
#: decoding, before orientation and colour conversion, so those steps copy a small image; smaller images are
#: processed in full.
REDUCE_ABOVE_PIXELS = 4_000_000
#: Allowance for the strips of a strip-wise reduction.
STRIP_BYTES = 4 * 2**20
#: Modes Image.reduce takes.
_REDUCIBLE = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "I", "F")


def draft_to(img: Image.Image, keep_side: int) -> None:
    """Let an opened, not yet loaded JPEG decode at the smallest DCT scale that keeps both sides >= ``keep_side``
    (``img.size`` becomes that size); other formats, and ``keep_side`` 0, are left alone."""
    if keep_side <= 0 or img.format not in DRAFT_FORMATS:
        return
    try:
        img.draft("RGB", (keep_side, keep_side))
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"cannot decode image: {exc}") from None


def reduce_factor(img: Image.Image, keep_side: int) -> int:
    """The Image.reduce factor for an opened non-JPEG image above REDUCE_ABOVE_PIXELS that keeps its shorter side
    >= ``keep_side``; 1 (no reduction) for everything else."""
    width, height = img.size
    if keep_side <= 0 or img.format in (None, *DRAFT_FORMATS) or width * height <= REDUCE_ABOVE_PIXELS:
        return 1
    return max(1, min(width, height) // keep_side)


def plan_reduction(img: Image.Image, keep_side: int) -> int:
    """Drafts a JPEG (:func:`draft_to`) and returns the reduce factor of any other format (:func:`reduce_factor`)."""
    draft_to(img, keep_side)
    return reduce_factor(img, keep_side)


def reduced_decode_estimate(img: Image.Image, factor: int) -> int:
    """Peak bytes of decoding ``img`` in full and reducing it by ``factor`` (> 1) in strips: the decoded pixels
    (plus their 8-bit grey for 16-bit ones), the reduced image (4 bytes per pixel) and the strips."""
    width, height = img.size
    decoded = estimate_decode_bytes(width, height, img.mode, converted=False, strips=False)
    grey = width * height if img.mode.startswith("I;16") else 0
    return decoded + grey + 4 * -(-width // factor) * -(-height // factor) + STRIP_BYTES


def reduce_in_strips(image: Image.Image, factor: int) -> Image.Image:
    """``image.reduce(factor)`` (box average), converting modes Image.reduce cannot take first (16-bit to 8-bit
    grey, the rest to RGB or RGBA), strip by strip: strips whose height is a multiple of ``factor`` give the
    same pixels as reducing the whole, and no full-size converted copy is made."""
    image.load()
    if image.mode.startswith("I;16"):
        image = high_bit_depth_to_grey(image)  # scaled by the whole image's range; 1 byte per pixel
    width, height = image.size
    rows = factor * max(1, STRIP_ROWS // factor)
    out = None
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        if strip.mode not in _REDUCIBLE:
            has_alpha = strip.mode == "PA" or "transparency" in strip.info
            strip = strip.convert("RGBA" if strip.mode in ("PA", "P") and has_alpha else "RGB")
        small = strip.reduce(factor)
        if out is None:
            out = Image.new(small.mode, (-(-width // factor), -(-height // factor)))
        out.paste(small, (0, top // factor))
    return out


def keep_orientation(reduced: Image.Image, source: Image.Image) -> Image.Image:
    """``reduced`` carrying ``source``'s EXIF (its orientation), which Image.reduce drops; parsing it here also
    keeps ``source.getexif()`` answering once its pixels are released."""
    exif = source.getexif()
    if exif.get(0x0112, 1) not in (0, 1):
        reduced.info["exif"] = exif.tobytes()
    return reduced


#: What ImageOps.exif_transpose does for each EXIF orientation.
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def decode_estimate(img: Image.Image, keep_side: int = 0) -> int:
    """What :func:`decode_image` of the opened ``img`` needs at its peak (see :func:`estimate_decode_bytes`).
    With ``keep_side`` it first plans the reduction (drafting a JPEG: ``img.size`` becomes the decoded size): a
    reduced image needs :func:`reduced_decode_estimate` and then two RGB copies of the reduced size; one decoded
    in full needs its pixels and their RGB conversion, or, when it may be rotated (a JPEG's header says so; a
    PNG's or WebP's EXIF can only be read after decoding), two RGB images, whichever is larger."""
    factor = plan_reduction(img, keep_side)
    width, height = img.size
    if factor > 1:
        small = estimate_decode_bytes(-(-width // factor), -(-height // factor), "RGB", copies=2)
        return reduced_decode_estimate(img, factor) + small
    decoded = estimate_decode_bytes(width, height, img.mode)
    if header_orientation(img) in (0, 1):
        return decoded
    return max(decoded, estimate_decode_bytes(width, height, "RGB", copies=2))


def header_orientation(img: Image.Image) -> int:
    """The EXIF orientation when it can be read without decoding (JPEG/MPO headers); 0 for images made in
    memory; -1 (unknown, maybe rotated) for other formats, whose EXIF may follow the pixel data."""
    if img.format is None:
        return 0
    if img.format not in ("JPEG", "MPO"):
        return -1
    return _orientation(img)


def orient_in_place(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation to an image this module opened (no copy when there is nothing to turn)."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
        pass
    return img


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
        if "transparency" in img.info:
            return _alpha_over_white(img)
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _alpha_over_white(img)
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_rgb(img)
    if mode == "CMYK" and img.info.get("icc_profile"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            return ImageCms.profileToProfile(img, source, _SRGB, outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile falls back to Pillow's plain conversion
            pass
    return img.convert("RGB")


def _strips(img: Image.Image):
    """(top, strip) pairs of at most :data:`STRIP_ROWS` rows: the conversions below hold one strip's temporaries,
    never a full-size float copy."""
    width, height = img.size
    for top in range(0, height, STRIP_ROWS):
        yield top, img.crop((0, top, width, min(height, top + STRIP_ROWS)))


def _alpha_over_white(img: Image.Image) -> Image.Image:
    """Alpha composited over white, converted to RGB strip by strip (same pixels as doing it whole)."""
    out = Image.new("RGB", img.size)
    for top, strip in _strips(img):
        rgba = strip.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        out.paste(Image.alpha_composite(background, rgba).convert("RGB"), (0, top))
    return out


def high_bit_depth_to_grey(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer/float) greyscale scaled to 8 bits instead of clipped at 255, in row strips:
    the same values as scaling the whole float64 array at once, with temporaries of one strip."""
    low, high = img.getextrema()
    if img.mode == "F":
        low, high = float(low), float(high)
        if math.isnan(low) or math.isnan(high):  # what numpy's min/max give when any value is NaN
            low = high = math.nan
    else:
        full_scale = 65535.0 if high <= 65535 else float(high)
    grey = Image.new("L", img.size)
    for top, strip in _strips(img):
        values = np.asarray(strip, dtype=np.float64)
        if img.mode == "F":
            scaled = (values - low) / (high - low or 1.0) * 255.0
        else:
            scaled = values / full_scale * 255.0
        with np.errstate(invalid="ignore"):
            grey.paste(Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8)), (0, top))
    return grey


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16-bit (or 32-bit integer/float) greyscale to 8 bits instead of clipping at 255."""
    return high_bit_depth_to_grey(img).convert("RGB")


def _pixel_header(rgb: Image.Image) -> bytes:
    width, height = rgb.size
    return f"RGB:{width}x{height}:".encode()


def pixel_bytes(rgb: Image.Image) -> bytes:
    """Canonical byte form of decoded pixels (size header + raw RGB), for content hashing."""
    return _pixel_header(rgb) + rgb.tobytes()


def pixel_sha256(rgb: Image.Image) -> str:
    """SHA-256 hex of :func:`pixel_bytes`, fed strip by strip (no full-size byte copy)."""
    digest = hashlib.sha256(_pixel_header(rgb))
    for _, strip in _strips(rgb):
        digest.update(strip.tobytes())
    return digest.hexdigest()


def curated_image(rgb: Image.Image, max_side: int) -> Image.Image:
    """The curated copy's pixels: what ``copy(); thumbnail((max_side, max_side), LANCZOS)`` gives, without the
    full-size copy (the same size rounding and resize)."""
    width, height = rgb.size
    if max_side >= width and max_side >= height:
        return rgb.copy()
    aspect = width / height
    x = y = max_side

    def round_aspect(number: float, key) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    if (x, y) == rgb.size:
        return rgb.copy()
    small = rgb.resize((x, y), Image.Resampling.LANCZOS, reducing_gap=2.0)
    small.info = rgb.info.copy()  # as thumbnail() on a copy keeps it (a JPEG comment is saved again)
    return small


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def encode_curated_jpeg(rgb: Image.Image, max_side: int, quality: int) -> bytes:
    """A normalised copy: RGB JPEG, longest side at most ``max_side``, no EXIF or other metadata."""
    return encode_jpeg(curated_image(rgb, max_side), quality)
