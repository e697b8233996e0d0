"""Model definitions: the paper's 64x64 CNN (the baseline) and transfer learning on an ImageNet backbone
(MobileNet or EfficientNet-Lite).

Every model takes uint8-range RGB ``(size, size, 3)`` and scales it inside, as its backbone was trained
(MobileNets x / 127.5 - 1, EfficientNet-Lite (x - 127) / 128), so the TFLite input is plain uint8 RGB from
:func:`placeid_edge.preprocess.prepare_image`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

#: Backbones from ../shared/weights (PLACEID_WEIGHTS): how each is built, the scaling of uint8 RGB it was trained
#: with (``scale``, ``offset``: x * scale + offset, a layer inside the model), its native input size, the input size
#: placeid trains it at by default (MobileNetV2 1.0: 256, measured better than 224; the others their native size)
#: and the layer where fine-tuning starts. Keras application models are built and their weights file loaded; EfficientNet-Lite
#: files are whole Keras models (standard layers, feature map out, pooled here).
MOBILENET_SCALE = (1 / 127.5, -1.0)  # x / 127.5 - 1
LITE_SCALE = (1 / 128, -127 / 128)  # (x - 127) / 128: the official EfficientNet-Lite MEAN_RGB / STDDEV_RGB
BACKBONES = {
    "mobilenet_v2_1.0": {"builder": "MobileNetV2", "alpha": 1.0, "weights": "coral_mobilenet_v2_1.0_224_quant_dequant_no_top.weights.h5",
                         "scale": MOBILENET_SCALE, "native_size": 224, "train_size": 256, "fine_tune_from": "block_14_expand"},
    "mobilenet_v2_0.35": {"builder": "MobileNetV2", "alpha": 0.35, "weights": "tm_mobilenetv2_0.35_224_no_top.weights.h5",
                          "scale": MOBILENET_SCALE, "native_size": 224, "train_size": 224, "fine_tune_from": "block_14_expand"},
    "mobilenet_v1_0.25": {"builder": "MobileNet", "alpha": 0.25, "weights": "mobilenet_2_5_224_tf_no_top.h5",
                          "scale": MOBILENET_SCALE, "native_size": 224, "train_size": 224, "fine_tune_from": "conv_dw_12"},
    "efficientnet_lite0": {"builder": None, "weights": "efficientnet_lite0_imagenet_no_top.keras",
                           "scale": LITE_SCALE, "native_size": 224, "train_size": 224, "fine_tune_from": "block14_expand_conv"},
    "efficientnet_lite2": {"builder": None, "weights": "efficientnet_lite2_imagenet_no_top.keras",
                           "scale": LITE_SCALE, "native_size": 260, "train_size": 260, "fine_tune_from": "block19_expand_conv"},
}


def backbone_scale(backbone_name: str | None) -> str:
    """How the model scales its uint8 RGB input (for the manifest): the paper's CNN and MobileNets x / 127.5 - 1."""
    scale, offset = BACKBONES[backbone_name]["scale"] if backbone_name in BACKBONES else MOBILENET_SCALE
    return "x / 127.5 - 1, inside the model" if (scale, offset) == MOBILENET_SCALE else "(x - 127) / 128, inside the model"


@dataclass
class BuiltModel:
    model: keras.Model
    backbone: keras.Model | None
    feature_model: keras.Model | None  # input -> pooled features (frozen backbone), for the head stage
    head: keras.Model | None  # features -> probabilities


def _scaled_input(size: int, scale: tuple[float, float] = MOBILENET_SCALE):
    inputs = keras.Input((size, size, 3), name="image")
    scaled = layers.Rescaling(scale[0], offset=scale[1], name="scale")(inputs)
    return inputs, scaled


def build_paper_cnn(num_classes: int, size: int = 64) -> BuiltModel:
    """The paper's from-scratch CNN at 64x64: three conv blocks and a wide dense layer (about 25 MB of float32
    weights, as the paper's shipped model)."""
    inputs, x = _scaled_input(size)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(768, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="scores")(x)
    return BuiltModel(keras.Model(inputs, outputs, name="paper_cnn"), None, None, None)


def build_transfer(num_classes: int, size: int, backbone_name: str, weights: str | Path | None,
                   dropout: float = 0.2, none_output: bool = False) -> BuiltModel:
    """An ImageNet backbone (BatchNorm kept in inference mode), its own input scaling and a softmax head.

    With ``none_output`` the head's softmax has one more output, "no known place" (the last), learned from
    photos of no landmark (outlier exposure); the model's scores are the places' probabilities only, so they sum
    to 1 minus that of "none" and every consumer of a bundle reads them as before."""
    spec = BACKBONES[backbone_name]
    if spec["builder"] is None:  # a whole Keras model file (EfficientNet-Lite): feature map out
        if weights in (None, "imagenet"):
            raise ValueError(f"{backbone_name} is loaded from its model file ({spec['weights']}): pass its path")
        base = keras.models.load_model(str(weights), compile=False)
        base_in = keras.Input((size, size, 3))
        backbone = keras.Model(base_in, layers.GlobalAveragePooling2D()(base(base_in)), name=backbone_name)
    else:
        builder = getattr(keras.applications, spec["builder"])
        backbone = builder(input_shape=(size, size, 3), alpha=spec["alpha"], include_top=False,
                           weights="imagenet" if weights == "imagenet" else None, pooling="avg")
        if weights not in (None, "imagenet"):
            backbone.load_weights(str(weights))
    backbone.trainable = False
    inputs, x = _scaled_input(size, spec["scale"])
    features = backbone(x, training=False)
    feature_model = keras.Model(inputs, features, name="features")
    head_in = keras.Input((features.shape[-1],), name="features")
    h = layers.Dropout(dropout)(head_in)
    head_out = layers.Dense(num_classes + int(none_output), activation="softmax", name="scores")(h)
    head = keras.Model(head_in, head_out, name="head")
    scores = head(features)
    if none_output:
        scores = layers.Identity(name="place_scores")(scores[:, :num_classes])
    model = keras.Model(inputs, scores, name=f"placeid_{backbone_name}")
    return BuiltModel(model, backbone, feature_model, head)


def unfreeze_top(backbone: keras.Model, from_layer: str) -> int:
    """Make the backbone trainable from ``from_layer`` on (BatchNorm layers stay frozen). Returns how many
    layers train."""
    leaves = list(_leaf_layers(backbone))  # a whole-model backbone (EfficientNet-Lite) nests its layers
    if from_layer not in {layer.name for layer in leaves}:
        raise ValueError(f"{backbone.name} has no layer {from_layer!r} to fine-tune from")
    backbone.trainable = True
    trainable, count = False, 0
    for layer in leaves:
        if layer.name == from_layer:
            trainable = True
        layer.trainable = trainable and not isinstance(layer, layers.BatchNormalization)
        count += int(layer.trainable)
    return count


def _leaf_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def snap_weights_to_int8(model: keras.Model) -> int:
    """Round every Conv2D, DepthwiseConv2D and Dense kernel onto the grid the int8 converter will use
    (symmetric, per output channel, scale = max|w| / 127), so the Keras model and its int8 TFLite conversion
    share the same weights and differ only by activation rounding (the weight half of quantization-aware
    training). Frozen BatchNorm folds a per-channel factor into these kernels, which keeps them on the grid.
    Returns how many kernels were rounded."""
    count = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, layers.DepthwiseConv2D):
            channel_axes = (2, 3)  # (h, w, in, multiplier): one scale per (in, multiplier) pair
        elif isinstance(layer, (layers.Conv2D, layers.Dense)):
            channel_axes = (-1,)
        else:
            continue
        weights = layer.get_weights()
        kernel = weights[0]
        reduce_axes = tuple(a for a in range(kernel.ndim) if a not in {c % kernel.ndim for c in channel_axes})
        scale = np.abs(kernel).max(axis=reduce_axes, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        weights[0] = (np.round(kernel / scale) * scale).astype(kernel.dtype)
        layer.set_weights(weights)
        count += 1
    return count

