"""TFLite runtime with the usual fallback: ``ai_edge_litert`` -> ``tflite_runtime`` -> ``tf.lite``,
quantization-aware input/output (uint8/int8 models are fed and read through their scales), and a small pool
of interpreters, since one interpreter must never be used by two threads at once."""

from __future__ import annotations

import importlib
import os
import queue
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from placeid_edge.rejection import rejection_score


#: Runtimes in the order they are tried; ``PLACEID_TFLITE_RUNTIME`` names one to use instead.
RUNTIMES = {
    "ai-edge-litert": ("ai_edge_litert.interpreter", "Interpreter"),
    "tflite-runtime": ("tflite_runtime.interpreter", "Interpreter"),
    "tensorflow": ("tensorflow", "lite.Interpreter"),  # last resort: the full TensorFlow
}
RUNTIME_ENV = "PLACEID_TFLITE_RUNTIME"


def load_interpreter_class(runtime: str | None = None):
    """The TFLite Interpreter class and the runtime's name: ``runtime`` (or ``$PLACEID_TFLITE_RUNTIME``) when
    given, else the first of :data:`RUNTIMES` that is installed."""
    runtime = runtime or os.environ.get(RUNTIME_ENV) or None
    if runtime is not None and runtime not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV}={runtime!r}: expected one of {', '.join(RUNTIMES)}")
    for name in [runtime] if runtime else list(RUNTIMES):
        module_name, attribute = RUNTIMES[name]
        try:
            found = importlib.import_module(module_name)
        except ImportError:
            continue
        for part in attribute.split("."):
            found = getattr(found, part)
        return found, name
    raise ImportError(f"no TFLite runtime{' ' + runtime if runtime else ''} installed: "
                      "pip install ai-edge-litert (or tflite-runtime)")


class TFLiteModel:
    """A TFLite classifier: uint8 RGB images in, float probabilities out.

    Thread-safe: each call borrows an interpreter from a pool of at most ``pool_size`` (made on demand), so up
    to ``pool_size`` threads run inference at the same time and the rest wait."""

    def __init__(self, model: Path | str | bytes, num_threads: int | None = None, pool_size: int = 1,
                 num_classes: int | None = None):
        self._interpreter_class, self.runtime = load_interpreter_class()
        self._content = bytes(model) if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
        self._num_threads = num_threads
        self.pool_size = max(1, int(pool_size))
        first = self._new_interpreter()
        self.input = first.get_input_details()[0]
        self.output, self.features_output = _scores_and_features(first.get_output_details(), num_classes)
        self.size = int(self.input["shape"][1])
        self.num_classes = int(self.output["shape"][-1])
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._idle.put(first)
        self._created = 1
        self._create_lock = threading.Lock()

    def _new_interpreter(self):
        interpreter = self._interpreter_class(model_content=self._content, num_threads=self._num_threads)
        interpreter.allocate_tensors()
        return interpreter

    @contextmanager
    def _borrow(self):
        try:
            interpreter = self._idle.get_nowait()
        except queue.Empty:
            with self._create_lock:
                grow = self._created < self.pool_size
                self._created += grow
            interpreter = self._new_interpreter() if grow else self._idle.get()
        try:
            yield interpreter
        finally:
            self._idle.put(interpreter)

    def _quantize_input(self, images: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        scale, zero = self.input["quantization"]
        if dtype == np.uint8 and scale and (scale, zero) != (1.0, 0):
            # A uint8 input with scale/zero point: the model expects raw pixels mapped through them.
            return np.clip(np.rint(images / scale + zero), 0, 255).astype(np.uint8)
        if dtype == np.int8:
            return np.clip(np.rint(images.astype(np.float32) / scale + zero), -128, 127).astype(np.int8)
        return images.astype(dtype)

    @staticmethod
    def _dequantize(details: dict, values: np.ndarray) -> np.ndarray:
        scale, zero = details["quantization"]
        if details["dtype"] in (np.uint8, np.int8) and scale:
            return (values.astype(np.float32) - zero) * scale
        return values.astype(np.float32)

    @property
    def has_features(self) -> bool:
        return self.features_output is not None

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, when the model has that output, the pooled features for a batch of uint8 RGB
        images ``(n, size, size, 3)``, one invocation each."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        scores, features = [], []
        with self._borrow() as interpreter:
            for image in images:
                interpreter.set_tensor(self.input["index"], self._quantize_input(image[None]))
                interpreter.invoke()
                scores.append(self._dequantize(self.output, interpreter.get_tensor(self.output["index"]))[0])
                if self.features_output is not None:
                    raw = interpreter.get_tensor(self.features_output["index"])
                    features.append(self._dequantize(self.features_output, raw)[0])
        return np.stack(scores), (np.stack(features) if features else None)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of uint8 RGB images ``(n, size, size, 3)``."""
        return self.run(images)[0]


Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def run_with_mirror(run: Runner, images: np.ndarray, mirror_below_margin: float = 0.0
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """``run`` (images -> probabilities, features or None) on uint8 images ``(n, size, size, 3)``; the photos
    whose top-1 minus top-2 probability is below ``mirror_below_margin`` run again mirrored left to right, and
    their two answers (probabilities and features) are averaged. Unsure answers get steadier, and int8 rounding
    noise partly cancels between the passes, at the cost of a second pass for those photos only. Training
    measures Keras and every TFLite model through this function, so what it reports is what ships."""
    images = np.asarray(images)
    probabilities, features = run(images)
    if mirror_below_margin <= 0 or probabilities.shape[1] < 2:
        return probabilities, features
    unsure = np.flatnonzero(rejection_score(probabilities, "margin") < mirror_below_margin)
    if len(unsure):
        mirrored_probabilities, mirrored_features = run(np.ascontiguousarray(images[unsure, :, ::-1]))
        probabilities = probabilities.copy()
        probabilities[unsure] = (probabilities[unsure] + mirrored_probabilities) / 2
        if features is not None:
            features = features.copy()
            features[unsure] = (features[unsure] + mirrored_features) / 2
    return probabilities, features


def _scores_and_features(outputs: list[dict], num_classes: int | None) -> tuple[dict, dict | None]:
    """Which output holds the class probabilities and which (if any) the pooled features: by width, which
    needs ``num_classes`` when there are two outputs."""
    if len(outputs) == 1:
        return outputs[0], None
    if num_classes is None:
        raise ValueError("this model has several outputs: pass num_classes to tell the scores apart")
    scores = [o for o in outputs if int(o["shape"][-1]) == num_classes]
    others = [o for o in outputs if int(o["shape"][-1]) != num_classes]
    if len(scores) != 1 or len(others) != 1:
        raise ValueError(f"cannot tell scores ({num_classes} wide) from features among outputs of widths "
                         f"{[int(o['shape'][-1]) for o in outputs]}")
    return scores[0], others[0]
