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
from placeid_edge.imaging import ValidationLimits, check_header, open_image, to_rgb

RESAMPLE = Image.Resampling.BILINEAR
#: Stored in every model manifest; a consumer checks it matches before it feeds the model.
PREPROCESSING = {
    "name": "placeid-v1",
    "decode": "JPEG draft mode at >= model size; EXIF orientation applied; 8-bit RGB (alpha over white)",
    "resize": "centre crop to square, then bilinear resize to size x size",
    "input": "uint8 RGB, shape [1, size, size, 3]",
    "scale": "x / 127.5 - 1, inside the model",
}

ImageSource = str | Path | bytes | Image.Image


def prepare_image(source: ImageSource, size: int, limits: ValidationLimits = ValidationLimits()) -> np.ndarray:
    """Decode ``source`` into the model input: a ``(size, size, 3)`` uint8 RGB array.

    Anything read from a file (paths, bytes, images Pillow opened) must be an accepted format within ``limits``,
    checked from the header before any pixel is decoded: :class:`UnsupportedMediaType` or
    :class:`InvalidImage` otherwise. Images made in memory (no format) are taken as they are."""
    image = open_image(source)
    if image.format is not None:
        check_header(image, limits)
    try:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
        image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        square = ImageOps.fit(rgb, (size, size), method=RESAMPLE)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"cannot decode image: {exc}") from None
    return np.asarray(square, dtype=np.uint8)
