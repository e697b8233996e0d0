"""Export: a SavedModel with a TF-Serving-compatible signature, and TFLite models (float16, full int8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf


class _Serving(tf.Module):
    def __init__(self, model, labels: list[str], size: int):
        super().__init__()
        self.model = model
        self.labels = tf.constant(labels)
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8,
                                                                               name="images")])

    def _serve(self, images):
        scores = self.model(tf.cast(images, tf.float32), training=False)
        return {"scores": scores, "classes": tf.gather(self.labels, tf.argmax(scores, axis=-1))}


def export_saved_model(model, labels: list[str], size: int, path: Path) -> Path:
    """SavedModel whose ``serving_default`` takes uint8 ``images`` and returns ``scores`` (label order) and
    ``classes`` (the top label), as TensorFlow Serving serves it."""
    module = _Serving(model, labels, size)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def to_tflite(model, quantization: str, representative: np.ndarray | None = None) -> bytes:
    """TFLite flatbuffer: ``float16`` (weights in fp16, float I/O) or ``int8`` (full integer, uint8 input
    image and uint8 scores, calibrated on ``representative`` uint8 images from the training split)."""
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
    return converter.convert()
