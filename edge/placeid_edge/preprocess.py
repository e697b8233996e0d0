"""The one preprocessing function shared by training, the predict function and the edge package.

Policy: decode (JPEG in draft mode: decoded at a reduced scale, never below the model size), apply EXIF
orientation, convert to 8-bit RGB, centre-crop to a square and resize to the model size. The result is uint8
RGB, which is the TFLite input; scaling to [-1, 1] is a layer inside the model, so no caller can get it wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from placeid_edge.errors import InvalidImage
from placeid_edge.imaging import (
    REDUCE_ABOVE_PIXELS,
    STRIP_BYTES,
    ValidationLimits,
    check_header,
    decode_budget,
    draft_to,
    estimate_decode_bytes,
    header_orientation,
    keep_orientation,
    open_image,
    orient_in_place,
    reduce_factor,
    reduce_in_strips,
    reduced_decode_estimate,
    to_rgb,
)

RESAMPLE = Image.Resampling.BILINEAR
#: A JPEG at least DRAFT_SCALE x the model size on both sides is decoded in draft mode at 1/DRAFT_SCALE (a phone's
#: 12 MP photo: the fast path, each decoded pixel an 8 x 8 block's mean, from the DCT's DC terms); any other JPEG
#: in full, unless it is above REDUCE_ABOVE_PIXELS (4 MP): then at the smallest scale that keeps the model size.
#: A browser, which can only decode in full and then take block means (placeid/data/web/offline.js), gives nearly
#: the same input (bench/browser_bench.py). placeid-v1 drafted every JPEG at 1/2, 1/4 or 1/8 down to the model
#: size, and 1/2 and 1/4 a browser cannot reproduce: its answers then differed by up to 0.23 in probability on
#: 320-px photos for a 96-px model.
DRAFT_SCALE = 8


def draft_side(width: int, height: int, size: int) -> int:
    """The side :func:`imaging.draft_to` keeps for a ``width`` x ``height`` JPEG and a model of ``size``: ``size``
    when that drafts at 1/DRAFT_SCALE or the JPEG is above REDUCE_ABOVE_PIXELS, else 0 (decoded in full)."""
    if min(width // size, height // size) >= DRAFT_SCALE or width * height > REDUCE_ABOVE_PIXELS:
        return size
    return 0


#: Other images above REDUCE_ABOVE_PIXELS are reduced right after decoding to no less than REDUCE_KEEP x the model
#: size on the shorter side (imaging.reduce_in_strips).
REDUCE_KEEP = 4
#: Stored in every model manifest; a consumer checks it matches before it feeds the model.
PREPROCESSING = {
    "name": "placeid-v2",
    "decode": "JPEG draft mode at 1/8 when that keeps >= model size (or above 4 MP), else in full; EXIF orientation "
              "applied; 8-bit RGB (alpha over white)",
    "resize": "centre crop to square, then bilinear resize to size x size, across then down",
    "input": "uint8 RGB, shape [1, size, size, 3]",
    "scale": "x / 127.5 - 1, inside the model",
}

#: Preprocessings a bundle may have been trained with and still be served with this one: v1 differs only in also
#: drafting JPEGs at 1/2 and 1/4, which moves a photo's input by a fraction of a grey level on average.
COMPATIBLE_PREPROCESSING = ("placeid-v1", "placeid-v2")

ImageSource = str | Path | bytes | Image.Image


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """The centred square crop of ``image`` (ImageOps.fit's float box) resized to ``size`` x ``size`` with Pillow's
    bilinear filter, one axis at a time: across first, then down, each pass rounded to 8 bits. One resize call
    would let Pillow choose the order (13.0 goes down first for some tall photos, and the 8-bit rounding between the
    passes then differs by one grey level here and there); this order is one a browser reproduces exactly
    (placeid/data/web/offline.js)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    across = image.resize((size, height), RESAMPLE, box=(left, 0, left + side, height))
    return across.resize((size, size), RESAMPLE, box=(0, top, size, top + side))


def prepare_image(source: ImageSource, size: int, limits: ValidationLimits = ValidationLimits()) -> np.ndarray:
    """Decode ``source`` into the model input: a ``(size, size, 3)`` uint8 RGB array.

    Decoding reserves its estimated memory from the process's decode budget (imaging.decode_budget) first. A
    non-JPEG image above REDUCE_ABOVE_PIXELS passed opened but not loaded is closed afterwards (its pixels
    released; its header and ``getexif()`` stay readable).

    Anything read from a file (paths, bytes, images Pillow opened) must be an accepted format within ``limits``,
    checked from the header before any pixel is decoded: :class:`UnsupportedMediaType` or
    :class:`InvalidImage` otherwise. Images made in memory (no format) are taken as they are."""
    opened = not isinstance(source, Image.Image)
    image = open_image(source)
    if image.format is None:  # made in memory: already decoded, nothing to reserve
        return _prepare(image, size, opened)
    check_header(image, limits)
    draft_to(image, draft_side(*image.size, size))
    with decode_budget.reserve(prepare_estimate(image, size), "image"):
        return _prepare(image, size, opened)


def prepare_estimate(image: Image.Image, size: int) -> int:
    """Peak bytes :func:`prepare_image` holds for an opened image (after ``draft``): for a reduced image the
    decoded pixels (plus their 8-bit grey for 16-bit ones), the reduced image and the strips; else the decoded
    pixels, a rotation's copy and the RGB conversion."""
    width, height = image.size  # after draft: the reduced JPEG size
    factor = reduce_factor(image, REDUCE_KEEP * size)
    if factor > 1:
        return reduced_decode_estimate(image, factor)
    rotated = header_orientation(image) not in (0, 1)
    return estimate_decode_bytes(width, height, image.mode, copies=2 if rotated else 1)


#: Predict's decode budget unless PLACEID_DECODE_BUDGET_MB says otherwise: with the worker's own ~120 MiB and the
#: request bodies' budget it keeps a worker under 300 MiB (bench/hostile_bench.py). It admits every JPEG the pixel
#: limit allows (draft mode decodes at 1/8 scale), 16-bit and palette PNGs up to 40 MP, and PNG/WebP/HEIF images
#: held in 4 bytes per pixel up to about 32 MP; larger ones are refused (413) from their header.
DEFAULT_BUDGET_BYTES = 128 * 2**20


def budget_bytes(max_pixels: int) -> int:
    """Predict's automatic decode budget: :data:`DEFAULT_BUDGET_BYTES`, or less when ``max_pixels`` is small
    enough that the largest allowed image (a 4-byte mode reduced in strips, see :func:`prepare_estimate`, or an
    image just under REDUCE_ABOVE_PIXELS decoded, rotated and converted in full) needs less."""
    reduced = max_pixels * 4 + max_pixels + STRIP_BYTES
    full = min(max_pixels, REDUCE_ABOVE_PIXELS) * 12 + 4 * 2**20
    return min(DEFAULT_BUDGET_BYTES, max(reduced, full))


def _prepare(image: Image.Image, size: int, opened: bool) -> np.ndarray:
    try:
        factor = reduce_factor(image, REDUCE_KEEP * size)
        if factor > 1:
            source = image
            image = keep_orientation(reduce_in_strips(source, factor), source)
            # Its full-size pixels go now, inside the reservation, even when the caller still holds the image
            # (Bundle reads its GPS afterwards): the EXIF is parsed first, and stays readable (getexif).
            source.close()
            del source
            opened = True
        image = orient_in_place(image) if opened else ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        square = fit_square(rgb, size)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"cannot decode image: {exc}") from None
    return np.asarray(square, dtype=np.uint8)
