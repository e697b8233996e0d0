"""TFLite runtime with the usual fallback: ``ai_edge_litert`` -> ``tflite_runtime`` -> ``tf.lite``,
and quantization-aware input/output (uint8/int8 models are fed and read through their scales)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


def load_interpreter_class():
    """The first TFLite Interpreter class available, and the runtime's name."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    import tensorflow as tf  # last resort: the full TensorFlow

    return tf.lite.Interpreter, "tensorflow"


class TFLiteModel:
    """A TFLite classifier: uint8 RGB images in, float probabilities out. Thread-safe (one lock)."""

    def __init__(self, model: Path | str | bytes, num_threads: int | None = None):
        interpreter_class, self.runtime = load_interpreter_class()
        if isinstance(model, (bytes, bytearray)):
            self.interpreter = interpreter_class(model_content=bytes(model), num_threads=num_threads)
        else:
            self.interpreter = interpreter_class(model_path=str(model), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.size = int(self.input["shape"][1])
        self._lock = threading.Lock()

    def _quantize_input(self, images: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        scale, zero = self.input["quantization"]
        if dtype == np.uint8 and scale and (scale, zero) != (1.0, 0):
            # A uint8 input with scale/zero point: the model expects raw pixels mapped through them.
            return np.clip(np.rint(images / scale + zero), 0, 255).astype(np.uint8)
        if dtype == np.int8:
            return np.clip(np.rint(images.astype(np.float32) / scale + zero), -128, 127).astype(np.int8)
        return images.astype(dtype)

    def _dequantize_output(self, values: np.ndarray) -> np.ndarray:
        scale, zero = self.output["quantization"]
        if self.output["dtype"] in (np.uint8, np.int8) and scale:
            return (values.astype(np.float32) - zero) * scale
        return values.astype(np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of uint8 RGB images ``(n, size, size, 3)``, one invocation each."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        results = []
        with self._lock:
            for image in images:
                self.interpreter.set_tensor(self.input["index"], self._quantize_input(image[None]))
                self.interpreter.invoke()
                results.append(self._dequantize_output(self.interpreter.get_tensor(self.output["index"]))[0])
        return np.stack(results)
