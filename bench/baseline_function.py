"""The serving benchmark's baseline, the paper's approach: the run's SavedModel in full TensorFlow (as
TensorFlow Serving runs it), each photo decoded at full size, under the same functions-framework HTTP server.

BASELINE_SAVED_MODEL names the SavedModel folder. It is loaded by the first request, in the server's worker
process: TensorFlow's thread pools do not survive gunicorn's fork, so loading it at import (in the master)
would hang every request. Cold start, process start to first answer, includes the load either way."""

from __future__ import annotations

import io
import os
import threading

import flask
import functions_framework
import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

_lock = threading.Lock()
_loaded: dict = {}


def _signature():
    with _lock:
        if not _loaded:
            model = tf.saved_model.load(os.environ["BASELINE_SAVED_MODEL"])
            serve = model.signatures["serving_default"]
            _loaded.update(model=model, serve=serve,
                           size=int(serve.structured_input_signature[1]["images"].shape[1]))
    return _loaded["serve"], _loaded["size"]


@functions_framework.http
def predict(request: flask.Request):
    serve, size = _signature()
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(request.get_data()))).convert("RGB")
    pixels = np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    scores = serve(images=tf.constant(pixels[None]))["scores"].numpy()[0]
    return {"scores": scores.tolist()}
