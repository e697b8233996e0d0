"""Export: a SavedModel with a TF-Serving-compatible signature, and TFLite models (float16, full int8)."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import tensorflow as tf


@contextmanager
def quiet_library_output():
    """Keep what TensorFlow's export and converter print (a TensorSpec line per captured variable, MLIR pass
    logs, from Python and C++ alike) out of the run's output: Python's sys.stdout/sys.stderr and file descriptors
    1 and 2 go to a temporary file for the duration, which is shown only when the block fails. Progress bars and
    summaries are printed outside."""
    tf.get_logger()  # its handler binds to the sys.stderr of its first use: the real one, not this block's
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    failed = True
    with tempfile.TemporaryFile(mode="w+b") as sink:
        text = io.TextIOWrapper(sink, encoding="utf-8", errors="replace", write_through=True)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with redirect_stdout(text), redirect_stderr(text):
                yield
            failed = False
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            text.detach()
            if failed:  # what was printed explains the failure
                sink.seek(0)
                sys.stderr.write(sink.read()[-20000:].decode(errors="replace"))


class _Serving(tf.Module):
    def __init__(self, model, labels: list[str], size: int, mirror_below_margin: float):
        super().__init__()
        self.model = model
        self.labels = tf.constant(labels)
        self.mirror_below_margin = mirror_below_margin
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8,
                                                                               name="images")])

    def _serve(self, images):
        pixels = tf.cast(images, tf.float32)
        scores = self.model(pixels, training=False)
        if self.mirror_below_margin > 0:  # as placeid_edge.runtime.run_with_mirror answers
            top_two = tf.math.top_k(scores, 2).values
            unsure = top_two[:, 0] - top_two[:, 1] < self.mirror_below_margin
            scores = tf.cond(tf.reduce_any(unsure),
                             lambda: tf.where(unsure[:, None],
                                              (scores + self.model(tf.reverse(pixels, [2]), training=False)) / 2, scores),
                             lambda: scores)
        return {"scores": scores, "classes": tf.gather(self.labels, tf.argmax(scores, axis=-1))}


def export_saved_model(model, labels: list[str], size: int, path: Path, mirror_below_margin: float = 0.0) -> Path:
    """SavedModel whose ``serving_default`` takes uint8 ``images`` and returns ``scores`` (label order) and
    ``classes`` (the top label), as TensorFlow Serving serves it; unsure scores are averaged with the mirror
    image's, as the bundle does."""
    module = _Serving(model, labels, size, mirror_below_margin)
    with quiet_library_output():
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def to_tflite(model, quantization: str, representative: np.ndarray | None = None) -> bytes:
    """TFLite flatbuffer: ``float16`` (weights in fp16, float I/O) or ``int8`` (full integer, uint8 input
    image and uint8 scores, calibrated on ``representative`` uint8 images from the training split)."""
    with quiet_library_output():
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if representative is None or not len(representative):
            raise ValueError("int8 conversion needs representative images")

        def samples():
            for image in representative:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    else:
        raise ValueError(f"unknown quantization {quantization!r}")
    with quiet_library_output():
        return with_batch_of_one(converter.convert())


def with_batch_of_one(flatbuffer: bytes) -> bytes:
    """The same model with its batch dimension fixed to 1 (the converter leaves it dynamic, -1). Every consumer
    runs one photo per invocation; LiteRT.js, which the page runs offline, refuses a dynamic batch."""
    return with_batch(flatbuffer, 1)


def with_batch(flatbuffer: bytes, batch: int) -> bytes:
    """The same model with the batch dimension of its shape signatures (-1 dynamic, or 1) set to ``batch``. Only
    shape signatures change (TensorFlow's own flatbuffer tools): weights and outputs are the same, byte for byte."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            signature = tensor.shapeSignature
            if signature is not None and len(signature) and signature[0] in (-1, 1):
                signature[0] = batch
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
