"""One training run: split -> preprocess -> train -> export -> convert -> evaluate -> parity -> unknown-place
rule -> run folder (SavedModel, TFLite float16 and int8, labels, metrics, plots, TensorBoard logs, bundle)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from placeid.config import Settings  # noqa: E402
from placeid_edge.preprocess import PREPROCESSING, prepare_image  # noqa: E402
from placeid_edge.bundle import PROTOTYPES_FILE  # noqa: E402
from placeid_edge.rejection import FEATURE_RULES, RULE_KINDS, apply_rejection, rejection_score  # noqa: E402
from placeid_edge.runtime import TFLiteModel, run_with_mirror  # noqa: E402
from training import evaluate  # noqa: E402
from training.disk_arrays import DiskArray  # noqa: E402
from training.dataset import (SPLITS, Example, class_weights, fingerprint, fold_of_each,  # noqa: E402
                              split_examples)
from training.export import export_saved_model, to_tflite  # noqa: E402
from training.models import (BACKBONES, backbone_scale, build_paper_cnn, build_transfer,  # noqa: E402
                             snap_weights_to_int8, unfreeze_top)


class TrainingFailed(RuntimeError):
    """A run that must not produce a model (for example, int8 disagrees with Keras)."""


@dataclass
class TrainConfig:
    """Every training default, in one place: the command line, the benchmarks and the tests start from these
    (``for_model`` for the paper's CNN, ``fast()`` for a quick demo or test model) and change only what they set."""

    #: The paper's from-scratch CNN reads 64 x 64 photos; the fast preset's transfer model 96 x 96.
    PAPER_SIZE: ClassVar[int] = 64
    FAST_SIZE: ClassVar[int] = 96

    model: str = "transfer"  # an ImageNet backbone and a head, or "paper" (the paper's CNN, the baseline)
    # Chosen by measurement (bench/results/backbones.json, README Training): EfficientNet-Lite0 at 224 px beat
    # MobileNetV2 at 256 on every fold, as fast; Lite2 was no better, larger and slower.
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None  # a file, "imagenet", or None (from PLACEID_WEIGHTS)
    size: int | None = None  # None: the backbone's train_size (models.BACKBONES), the paper's CNN PAPER_SIZE
    head_epochs: int = 40
    # Fine-tuning the top of the backbone (from fine_tune_from) is off by default: measured on world30 it did not
    # raise top-1 (0.89-0.92 over five runs vs 0.908 without) and it made the unknown-place rule wrongly reject
    # more landmark photos (its features pull strangers towards known places); it also makes training
    # non-reproducible on CPU threads and twice as long (README, Training, has both rows). --fine-tune-epochs 10.
    fine_tune_epochs: int = 0
    fine_tune_from: str | None = None  # first backbone layer to fine-tune (default: the backbone's, models.BACKBONES)
    paper_epochs: int = 50
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    fine_tune_cosine: bool = True  # fine-tuning's learning rate decays to zero (steadier last epochs)
    augment_views: int = 2  # augmented copies of each training photo for the head stages
    head_dropout: float = 0.5
    quantization_robust_head: bool = True
    snap_weights: bool = True  # kernels rounded onto the int8 grid after training (Keras and int8 share weights)
    mirror_below_margin: float = 0.5  # unsure answers (top-1 - top-2 below this) averaged with the mirror image's
    flip: bool = True  # horizontal flips ...
    no_flip_places: list[str] = field(default_factory=list)  # ... except for these (text, asymmetric facades)
    seed: int = 0
    fold: int = 0  # which disjoint share of each place's photos is the test split (split_examples)
    near_dup_distance: int = Settings.near_dup_distance
    # Unknown place. With negatives (../shared/data/negatives), the head learns a "no known place" output from
    # them (outlier exposure; measured: README, Training) and the rule's threshold is set on the validation
    # photos to reject at most target_landmark_rejection of new landmark photos (split-conformal); the share of
    # negatives it rejects is measured by cross-fitting (heads re-fitted without each fold of negatives).
    none_output: bool = True
    none_weight: float = 0.5  # a negative's loss weight next to a landmark photo's (its class weight)
    target_landmark_rejection: float = 0.03
    # Without the "none" output (the paper's CNN, or none_output=False), the threshold rejects all but this share of
    # the negatives instead (split-conformal on them).
    target_false_accept: float = 0.10
    # Vetting the collection (placeid.vetting): the model's answer is trusted as a label, or to contradict one, from
    # the top-1 probability at which its answers on the validation photos are right this often (at least
    # auto_label_min_photos of them); the share right on the test photos is measured and ships in the manifest.
    auto_label_precision: float = 0.99
    auto_label_min_photos: int = 20
    rejection_folds: int = 10  # cross-fitting folds that measure the unknown-place rule on unseen negatives
    prototypes_per_place: int = 5  # k-means centres of each place's features, for the prototype rules
    # The parity gate: with 95 % confidence (Wilson lower bound), the int8 model gives Keras's top-1 answer on at
    # least this share of the held-out photos' views (validation and test photos, each as is, mirrored, centre-
    # cropped and both; the exact rate is in metrics.json, "parity"). A failed gate keeps the run folder and refuses
    # only to register or promote it.
    min_int8_agreement: float = 0.98
    representative_count: int = 500
    patience: int = 5
    show_progress: bool = True

    def __post_init__(self):
        if self.model not in ("transfer", "paper"):
            raise ValueError(f"unknown model {self.model!r}: transfer or paper")
        if self.model == "transfer" and self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; known: {', '.join(BACKBONES)}")
        if self.size is None:
            self.size = self.PAPER_SIZE if self.model == "paper" else BACKBONES[self.backbone]["train_size"]

    @classmethod
    def for_model(cls, model: str = "transfer", **overrides) -> "TrainConfig":
        """The defaults for ``model`` and its backbone (their input size), with ``overrides`` (None values
        ignored)."""
        return cls(model=model, **{key: value for key, value in overrides.items() if value is not None})

    def fast(self) -> "TrainConfig":
        """This configuration as a quick model for demos and smoke tests: 15 head epochs (8 for the paper's CNN),
        no fine-tuning, one augmented view, and FAST_SIZE input for the transfer model (the paper's CNN keeps its
        size). Accuracy is not its point: `make demo` and the tests train it in a minute or two."""
        size = self.size if self.model == "paper" else self.FAST_SIZE
        return replace(self, size=size, head_epochs=15, fine_tune_epochs=0, paper_epochs=8, augment_views=1)


def augment(image: tf.Tensor, size: int, flip) -> tf.Tensor:
    """Real-world variation: JPEG noise, random crop (75-100% of the side), flip (where ``flip``, a bool or
    a boolean tensor, allows it), colour, blur."""
    x = tf.image.random_jpeg_quality(tf.cast(image, tf.uint8), 35, 95)
    x = tf.cast(x, tf.float32)
    crop = tf.cast(tf.random.uniform([], 0.75, 1.0) * size, tf.int32)
    x = tf.image.resize(tf.image.random_crop(x, tf.stack([crop, crop, 3])), [size, size])
    x = tf.cond(tf.convert_to_tensor(flip), lambda: tf.image.random_flip_left_right(x), lambda: x)
    x = tf.image.random_brightness(x, 25.0)
    x = tf.image.random_contrast(x, 0.8, 1.2)
    x = tf.image.random_saturation(x, 0.8, 1.25)
    kernel = tf.constant([1.0, 2.0, 1.0])
    kernel = tf.tensordot(kernel, kernel, axes=0) / 16.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "SAME")[0]
    x = tf.cond(tf.random.uniform([]) < 0.25, lambda: blurred, lambda: x)
    return tf.clip_by_value(x, 0.0, 255.0)


@lru_cache(maxsize=None)
def _batch_augmenter(size: int):
    """:func:`augment` over a batch, as one compiled graph: uint8 ``(n, size, size, 3)`` and per-photo flip flags
    -> float32 views. (Called eagerly, photo by photo, its random ops would keep a kernel per call once a global
    seed is set: measured, 290 KB a photo, a leak that grows with the collection.)"""
    def augment_batch(images: tf.Tensor, flips: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(lambda pair: augment(pair[0], size, pair[1]), (images, flips),
                         fn_output_signature=tf.float32)

    return tf.function(augment_batch, input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8),
                                                       tf.TensorSpec((None,), tf.bool)])


def _image_dataset(images: DiskArray, targets: np.ndarray, config: TrainConfig, training: bool,
                   flippable: np.ndarray | None = None):
    """A tf.data pipeline of (image, target) streamed from ``images`` on disk, ``IMAGE_CHUNK`` photos at a time:
    shuffled anew each epoch (seeded) and augmented when ``training``; batched."""
    shuffle = np.random.default_rng(config.seed)
    size = images.row_shape[0]

    def rows():
        order = shuffle.permutation(len(images)) if training else np.arange(len(images))
        for start in range(0, len(order), IMAGE_CHUNK):
            chunk = order[start:start + IMAGE_CHUNK]
            yield from zip(images.take(chunk), targets[chunk])

    data = tf.data.Dataset.from_generator(rows, output_signature=(tf.TensorSpec((size, size, 3), tf.uint8),
                                                                  tf.TensorSpec((), tf.int64)))
    data = data.apply(tf.data.experimental.assert_cardinality(len(images)))  # Keras knows an epoch's steps
    if training:
        flips = tf.constant(flippable)
        data = data.map(lambda x, y: (augment(x, size, tf.gather(flips, y)), y), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        data = data.map(lambda x, y: (tf.cast(x, tf.float32), y))
    return data.batch(config.batch_size).prefetch(2)


class FeatureBatches(keras.utils.PyDataset):
    """Shuffled batches of (features, target, weight) read from feature files on disk: what the head trains on,
    so a run's memory does not grow with its number of photos and views. ``sources`` are read as one array of
    their rows in order, ``targets`` has a target per row, weighted by ``class_weight``. With ``negatives`` (the
    same kind of files, rows of no-landmark photos, only ``negative_rows`` of them when given), each batch also
    holds ``batch_size`` negative rows, cycled through in a shuffled order, with target ``none_target`` and
    weight ``none_weight`` (outlier exposure)."""

    def __init__(self, sources: list[DiskArray], targets: np.ndarray, class_weight: dict[int, float],
                 batch_size: int, seed: int, negatives: list[DiskArray] | None = None,
                 negative_rows: np.ndarray | None = None, none_target: int = -1, none_weight: float = 0.0) -> None:
        super().__init__()
        self.sources, self.targets, self.batch_size = sources, targets, batch_size
        self.starts = np.cumsum([0] + [len(source) for source in sources])
        self.weights = np.array([class_weight[i] for i in range(len(class_weight))], dtype=np.float32)
        self.shuffle = np.random.default_rng(seed)
        self.order = self.shuffle.permutation(int(self.starts[-1]))
        self.negatives = negatives or []
        self.negative_starts = np.cumsum([0] + [len(source) for source in self.negatives])
        self.negative_pool = (np.arange(self.negative_starts[-1]) if negative_rows is None
                              else np.asarray(negative_rows, dtype=np.int64))
        self.negative_order, self.negative_next = self.shuffle.permutation(self.negative_pool), 0
        self.none_target, self.none_weight = none_target, none_weight

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    @staticmethod
    def _read(sources: list[DiskArray], starts: np.ndarray, rows: np.ndarray) -> np.ndarray:
        features = np.empty((len(rows), *sources[0].row_shape), dtype=np.float32)
        source_of = np.searchsorted(starts, rows, side="right") - 1
        for number, source in enumerate(sources):
            mine = np.flatnonzero(source_of == number)
            if len(mine):
                features[mine] = source.take(rows[mine] - starts[number])
        return features

    def _next_negatives(self) -> np.ndarray:
        taken = []
        while sum(map(len, taken)) < self.batch_size:
            if self.negative_next >= len(self.negative_order):
                self.negative_order, self.negative_next = self.shuffle.permutation(self.negative_pool), 0
            part = self.negative_order[self.negative_next:self.negative_next + self.batch_size - sum(map(len, taken))]
            self.negative_next += len(part)
            taken.append(part)
        return np.concatenate(taken)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        features = self._read(self.sources, self.starts, rows)
        targets = self.targets[rows]
        weights = self.weights[targets]
        if len(self.negative_pool):
            negative = self._next_negatives()
            features = np.concatenate([features, self._read(self.negatives, self.negative_starts, negative)])
            targets = np.concatenate([targets, np.full(len(negative), self.none_target, dtype=targets.dtype)])
            weights = np.concatenate([weights, np.full(len(negative), self.none_weight, dtype=np.float32)])
        return features, targets, weights

    def on_epoch_end(self) -> None:
        self.order = self.shuffle.permutation(len(self.order))


def _callbacks(config: TrainConfig, logs: Path, stage: str | None) -> list:
    """Early stopping on the validation loss (best weights kept), and TensorBoard logs of a named ``stage``."""
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                               restore_best_weights=True)]
    if stage:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(logs / stage), histogram_freq=0, write_graph=False))
    return callbacks


def _merge(history: dict, new: dict) -> None:
    for key, values in new.items():
        history.setdefault(key, []).extend(float(v) for v in values)


def preprocess_to_disk(examples: list[Example], size: int, path: Path, show_progress: bool) -> DiskArray:
    """Every example read from its file and preprocessed as served (:func:`prepare_image`), written to ``path``
    a chunk at a time (two decoding threads): memory holds one chunk, not the collection."""
    def chunks():
        with ThreadPoolExecutor(max_workers=2) as pool, tqdm(total=len(examples), desc=f"preprocess {size}px",
                                                             unit="img", disable=not show_progress) as progress:
            for start in range(0, len(examples), IMAGE_CHUNK):
                chunk = list(pool.map(lambda e: prepare_image(e.read(), size), examples[start:start + IMAGE_CHUNK]))
                progress.update(len(chunk))
                yield np.stack(chunk)

    return DiskArray.write(path, chunks(), (size, size, 3), np.uint8)


def run_batched(run, images: DiskArray, mirror: float, batch: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`run_with_mirror` over the photos on disk, ``batch`` at a time (probabilities, features or None)."""
    answers = [run_with_mirror(run, part, mirror) for part in images.batches(batch)]
    features = [f for _, f in answers if f is not None]
    return (np.concatenate([p for p, _ in answers]) if answers else np.empty((0, 0)),
            np.concatenate(features) if features else None)


def representative_images(train_images: DiskArray, config: TrainConfig) -> np.ndarray:
    """The seeded sample of training photos that calibrates every int8 conversion of a run."""
    order = np.random.default_rng(config.seed).permutation(len(train_images))
    return train_images.take(order[: config.representative_count])


def flippable_classes(config: TrainConfig, labels: list[str]) -> np.ndarray:
    """Per class: may its photos be mirrored during augmentation?"""
    return np.array([config.flip and label not in config.no_flip_places for label in labels])


def effective_mirror_margin(config: TrainConfig, labels: list[str]) -> float:
    """The margin under which answers are averaged with the mirror image's; 0 (never) unless every place
    may be mirrored."""
    return config.mirror_below_margin if flippable_classes(config, labels).all() else 0.0


def train_model(config: TrainConfig, x_train: DiskArray, y_train: np.ndarray, x_val: DiskArray, y_val: np.ndarray,
                labels: list[str], weights_path, logs: Path, work_dir: Path,
                negatives: DiskArray | None = None) -> TrainedModel:
    """Build and train. The model that ships has a second output, the pooled features, for the unknown-place
    rule (the paper's CNN has none). Photos stream from disk and the head's features are cached in ``work_dir``:
    memory does not grow with the collection. With ``negatives`` and ``config.none_output``, the head also learns
    a "no known place" output from them (outlier exposure), and the result can re-fit that head without some
    of them (:meth:`TrainedModel.refit_head`, for measuring the rule on negatives it never saw)."""
    num_classes = len(labels)
    flippable = flippable_classes(config, labels)
    keras.utils.set_random_seed(config.seed)
    weights = class_weights(list(y_train), num_classes)
    history: dict[str, list[float]] = {}
    verbose = 2 if config.show_progress else 0

    def fit_on_images(model: keras.Model, stage: str, learning_rate: float, epochs: int, decay: bool = False) -> None:
        """Train ``model`` end to end on augmented images (the paper's CNN, or the fine-tuning stage); ``decay``:
        the learning rate follows a cosine to zero over ``epochs``."""
        if decay:
            steps = epochs * -(-len(x_train) // config.batch_size)
            learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
        model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
        fit = model.fit(_image_dataset(x_train, y_train, config, True, flippable), epochs=epochs,
                        validation_data=_image_dataset(x_val, y_val, config, False),
                        class_weight=weights, callbacks=_callbacks(config, logs, stage), verbose=verbose,
                        shuffle=False)  # the pipeline shuffles, seeded
        _merge(history, fit.history)
        history.setdefault("stage_boundary", []).append(len(history["loss"]))

    if config.model == "paper":
        built = build_paper_cnn(num_classes, config.size)
        fit_on_images(built.model, "paper", config.learning_rate, config.paper_epochs)
        if config.snap_weights:
            snap_weights_to_int8(built.model)
        return TrainedModel(built.model, built.model, history)

    use_none = config.none_output and negatives is not None and len(negatives) > 0
    built = build_transfer(num_classes, config.size, config.backbone, weights_path, config.head_dropout, use_none)

    def float_features(images: np.ndarray) -> np.ndarray:
        return built.feature_model.predict(images.astype(np.float32), batch_size=64, verbose=0)

    def int8_feature_runner():
        """The int8 conversion of the (snapped) feature model, as the shipped model will compute features."""
        return TFLiteModel(to_tflite(built.feature_model, "int8", representative_images(x_train, config))).predict

    def view_features(stage: str, images: DiskArray, targets: np.ndarray, int8_run=None
                      ) -> tuple[DiskArray, DiskArray | None, np.ndarray, np.ndarray]:
        """Features of each photo of ``images`` and of ``config.augment_views`` augmented views of it, made batch
        by batch and written to ``work_dir`` as float16 (neither the views nor their features stay in memory):
        float ones, int8 ones when ``int8_run``, each row's target and the index of its photo."""
        width = built.feature_model.outputs[0].shape[-1]
        augment_views = _batch_augmenter(config.size)
        row_targets, row_photos = [], []
        with ExitStack() as files:
            floats = files.enter_context(DiskArray.create(work_dir / f"{stage}_float.npy", (width,), np.float16))
            int8s = (files.enter_context(DiskArray.create(work_dir / f"{stage}_int8.npy", (width,), np.float16))
                     if int8_run is not None else None)
            for start in tqdm(range(0, len(images), FEATURE_BATCH), desc=f"features ({stage})", unit="batch",
                              disable=not config.show_progress):
                photos, batch_targets = images.read(start, start + FEATURE_BATCH), targets[start:start + FEATURE_BATCH]
                flips = np.array([bool(flippable[t]) if t < num_classes else True for t in batch_targets])
                views = [photos] + [np.rint(augment_views(photos, flips).numpy()).astype(np.uint8)
                                    for _ in range(config.augment_views)]
                batch = np.concatenate(views)
                floats.append(float_features(batch))
                if int8s is not None:
                    int8s.append(int8_run(batch))
                row_targets.append(np.tile(batch_targets, len(views)))
                row_photos.append(np.tile(np.arange(start, start + len(photos)), len(views)))
        return floats, int8s, np.concatenate(row_targets), np.concatenate(row_photos)

    def fit_head(head: keras.Model, stage: str | None, sources: list[DiskArray], targets: np.ndarray,
                 val_features: np.ndarray, negative_sources: list[DiskArray] | None = None,
                 negative_rows: np.ndarray | None = None) -> dict:
        """Train ``head`` on ``sources`` (and the negatives' rows, towards "none"); returns its history. A
        ``stage`` name logs it to TensorBoard."""
        head.compile(keras.optimizers.Adam(config.learning_rate), "sparse_categorical_crossentropy",
                     metrics=["accuracy"])
        batches = FeatureBatches(sources, np.tile(targets, len(sources)), weights, config.batch_size, config.seed,
                                 negative_sources if use_none else None, negative_rows, num_classes,
                                 config.none_weight)
        return head.fit(batches, epochs=config.head_epochs, validation_data=(val_features, y_val),
                        callbacks=_callbacks(config, logs, stage), verbose=0).history

    def fit_shipped_head(stage: str, sources: list[DiskArray], targets: np.ndarray, val_features: np.ndarray,
                         negative_sources: list[DiskArray] | None) -> None:
        _merge(history, fit_head(built.head, stage, sources, targets, val_features, negative_sources))
        history.setdefault("stage_boundary", []).append(len(history["loss"]))

    def validation_features() -> np.ndarray:
        return np.concatenate([float_features(batch) for batch in x_val.batches(FEATURE_BATCH)])

    # The backbone's kernels go onto the int8 grid first, so every feature the heads learn from is what the int8
    # model computes from the same weights (after fine-tuning, which moves them, they are snapped again).
    if config.snap_weights:
        snap_weights_to_int8(built.backbone)
    robust = config.quantization_robust_head
    # Stage 1: the head, on features of clean and augmented views (the frozen backbone runs once per view).
    def training_and_negative_views(stage: str, int8_run):
        """view_features of the training photos, and of the negatives (target "none") when the head learns it."""
        photos = view_features(stage, x_train, y_train, int8_run)
        negative = (view_features(f"negative_{stage}", negatives, np.full(len(negatives), num_classes), int8_run)
                    if use_none else (None, None, None, None))
        return photos, negative

    int8_run = int8_feature_runner() if robust and config.fine_tune_epochs == 0 else None
    (float_views, int8_views, view_targets, _), (negative_float, negative_int8, _, negative_photo) = \
        training_and_negative_views("views", int8_run)
    negative_views = [negative_float] if use_none else None
    val_features = validation_features()
    fit_shipped_head("head", [float_views], view_targets, val_features, negative_views)
    # Stage 2: fine-tune the top of the backbone on augmented images; then fresh views' features.
    if config.fine_tune_epochs > 0:
        unfreeze_top(built.backbone, config.fine_tune_from or BACKBONES[config.backbone]["fine_tune_from"])
        fit_on_images(built.model, "fine_tune", config.fine_tune_learning_rate, config.fine_tune_epochs,
                      decay=config.fine_tune_cosine)
        built.backbone.trainable = False
        if config.snap_weights:
            snap_weights_to_int8(built.backbone)
        if robust:
            (float_views, int8_views, view_targets, _), (negative_float, negative_int8, _, negative_photo) = \
                training_and_negative_views("tuned_views", int8_feature_runner())
            val_features = validation_features()
    # Stage 3: re-fit the head on the features of the float backbone *and* of its int8 conversion, so fewer
    # decisions hinge on quantization noise (int8 features differ from float ones by ~15 % in L2). With the
    # snapped kernels and the mirror pass for unsure photos, int8 and Keras agree (the parity gate).
    sources, negative_sources = [float_views], negative_views
    if robust:
        sources = [float_views, int8_views]
        negative_sources = [negative_float, negative_int8] if use_none else None
        fit_shipped_head("robust_head", sources, view_targets, val_features, negative_sources)
    if config.snap_weights:  # the backbone is snapped already
        snap_weights_to_int8(built.head)
    shipped = keras.Model(built.model.inputs, [built.model.outputs[0], built.feature_model.outputs[0]],
                          name=f"{built.model.name}_with_features")
    if not use_none:
        return TrainedModel(built.model, shipped, history)

    def refit_head(keep_photos: np.ndarray) -> keras.Model:
        """A head trained as the shipped one was (its last stage, from fresh weights), on the same features
        but only the negatives whose photo index is in ``keep_photos``: it has never seen the others."""
        keras.utils.set_random_seed(config.seed)
        head = keras.models.clone_model(built.head)  # the same architecture, fresh weights
        rows = np.flatnonzero(np.isin(np.tile(negative_photo, len(negative_sources)), keep_photos))
        fit_head(head, None, sources, view_targets, val_features, negative_sources, rows)
        if config.snap_weights:
            snap_weights_to_int8(head)
        return head

    return TrainedModel(built.model, shipped, history, refit_head)


@dataclass
class TrainedModel:
    """What :func:`train_model` returns: the Keras model, the model that ships (scores and features), the
    training history, and (for a head with a "none" output) a way to re-fit its head without some negatives."""

    model: keras.Model
    shipped: keras.Model
    history: dict
    refit_head: Callable[[np.ndarray], keras.Model] | None = None  # negatives to keep -> a head blind to the rest


@dataclass
class PreparedPhotos:
    """The photos of one run, split and preprocessed: what every later step reads."""

    labels: list[str]
    parts: dict[str, list[Example]]  # split name -> its examples
    arrays: dict[str, DiskArray]  # split name -> (n, size, size, 3) uint8, on disk
    targets: dict[str, np.ndarray]  # split name -> label indices
    negatives: DiskArray | None  # the no-landmark photos, preprocessed alike


@dataclass
class ShippedModel:
    """The int8 model that ships, and its answers (probabilities, features) on the photos that measure it."""

    runner: TFLiteModel
    probs: dict[str, np.ndarray]
    features: dict[str, np.ndarray | None]


def run_training(config: TrainConfig, examples: list[Example], negatives: list[Example], places: list[dict],
                 out_dir: Path, weights_path: str | Path | None = None) -> dict:
    """Train, convert, measure and write one run folder; returns the manifest, whose ``parity`` says whether the
    int8 model passed the parity gate (a run that failed it is kept, for inspection, and cannot be registered).
    Raises TrainingFailed when no model can be made."""
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    # The run's preprocessed photos and cached features live on disk (TMPDIR) until it ends.
    with tempfile.TemporaryDirectory(prefix="placeid-run-") as work:
        return _run_training(config, examples, negatives, places, out_dir, weights_path, Path(work), started)


def _run_training(config: TrainConfig, examples: list[Example], negatives: list[Example], places: list[dict],
                  out_dir: Path, weights_path, work_dir: Path, started: float) -> dict:
    photos = prepare_photos(config, examples, negatives, work_dir)
    trained = train_model(config, photos.arrays["train"], photos.targets["train"], photos.arrays["val"],
                          photos.targets["val"], photos.labels, weights_path, out_dir / "tensorboard", work_dir,
                          photos.negatives)
    model, shipped, history = trained.model, trained.shipped, trained.history
    train_seconds = time.monotonic() - started
    mirror = effective_mirror_margin(config, photos.labels)
    tflite_files = export_models(config, model, shipped, photos, mirror, out_dir)
    metrics, int8 = measure_models(model, tflite_files, photos, mirror)
    rule, metrics["unknown_place"] = calibrate_unknown_place(config, photos, int8, negatives, mirror, out_dir,
                                                             trained.refit_head)
    prototypes = (np.load(out_dir / rule["prototypes_file"]).astype(np.float32)
                  if rule and rule.get("prototypes_file") else None)
    metrics["parity"] = parity_gate(shipped, int8.runner, photos, config.min_int8_agreement, mirror, rule,
                                    prototypes)
    if metrics["unknown_place"] is None:
        del metrics["unknown_place"]
    metrics["vetting"] = calibrate_vetting(config, photos, int8, rule, prototypes)
    metrics["model_bytes"] = {**{name: path.stat().st_size for name, path in tflite_files.items()},
                              "keras_float32_params": int(model.count_params()),
                              "keras_float32_bytes": int(model.count_params()) * 4}
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics["total_seconds"] = round(time.monotonic() - started, 1)
    metrics["split_counts"] = {name: len(part) for name, part in photos.parts.items()}
    write_run_outputs(config, photos, examples, metrics, history, out_dir)

    return write_manifest(config, examples, places, photos.labels, rule, mirror, metrics, out_dir)


def prepare_photos(config: TrainConfig, examples: list[Example], negatives: list[Example],
                   work_dir: Path) -> PreparedPhotos:
    """Split the examples (group-aware, deterministic) and preprocess every split and the negatives into
    ``work_dir``."""
    split_examples(examples, seed=config.seed, distance=config.near_dup_distance, fold=config.fold)
    labels = sorted({e.label for e in examples})
    index = {label: i for i, label in enumerate(labels)}
    parts = {name: [e for e in examples if e.split == name] for name in SPLITS}
    if not all(parts.values()):
        raise TrainingFailed(f"a split is empty: { {k: len(v) for k, v in parts.items()} }")
    arrays = {name: preprocess_to_disk(part, config.size, work_dir / f"{name}.npy", config.show_progress)
              for name, part in parts.items()}
    targets = {name: np.array([index[e.label] for e in part]) for name, part in parts.items()}
    negative_arrays = (preprocess_to_disk(negatives, config.size, work_dir / "negatives.npy", config.show_progress)
                       if negatives else None)
    return PreparedPhotos(labels, parts, arrays, targets, negative_arrays)


def export_models(config: TrainConfig, model, shipped, photos: PreparedPhotos, mirror: float,
                  out_dir: Path) -> dict[str, Path]:
    """The SavedModel and the float16 and int8 TFLite models in ``out_dir``; returns the TFLite files."""
    export_saved_model(model, photos.labels, config.size, out_dir / "saved_model", mirror)
    representative = representative_images(photos.arrays["train"], config)
    tflite_files = {"float16": out_dir / "model_float16.tflite", "int8": out_dir / "model_int8.tflite"}
    for quantization, path in tflite_files.items():
        path.write_bytes(to_tflite(shipped, quantization, representative))
    return tflite_files


def keras_runner(model, batch: int = 64):
    """``model`` as a runner of uint8 images, the shape run_with_mirror takes: (probabilities, features), the
    features from a second output (the model that ships) or None."""
    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = model.predict(images.astype(np.float32), batch_size=batch, verbose=0)
        return (outputs[0], outputs[1]) if isinstance(outputs, (list, tuple)) else (outputs, None)

    return run


def measure_models(model, tflite_files: dict[str, Path], photos: PreparedPhotos,
                   mirror: float) -> tuple[dict, ShippedModel]:
    """Each model on the test photos, and the int8 model (the one that ships) also on what calibrates its rule;
    all of them answer as the bundle will (unsure photos averaged with their mirror image). Returns the
    metrics (with the int8/Keras top-1 agreement) and the shipped model's answers."""
    arrays, labels = photos.arrays, photos.labels

    keras_test = run_batched(keras_runner(model), arrays["test"], mirror)[0]
    runners = {quantization: TFLiteModel(path, num_classes=len(labels)) for quantization, path in tflite_files.items()}
    int8 = ShippedModel(runners["int8"], {}, {})
    for name, images in (("test", arrays["test"]), ("val", arrays["val"]), ("negatives", photos.negatives)):
        if images is not None:
            int8.probs[name], int8.features[name] = run_batched(int8.runner.run, images, mirror)
    test_probs = {"keras": keras_test,
                  "tflite_float16": run_batched(runners["float16"].run, arrays["test"], mirror)[0],
                  "tflite_int8": int8.probs["test"]}
    metrics = {name: evaluate.classification_metrics(probs, photos.targets["test"], labels)
               for name, probs in test_probs.items()}
    metrics["int8_keras_top1_agreement"] = float((int8.probs["test"].argmax(1) == keras_test.argmax(1)).mean())
    return metrics, int8


#: Photos (and their augmented views) whose features are computed at once: what bounds training's image memory.
FEATURE_BATCH = 128
#: Photos read from disk (and decoded, when preprocessing) at once.
IMAGE_CHUNK = 256

#: The views of each held-out photo the parity gate compares: as is, mirrored, centre crop (7/8 of the side,
#: resized back), and the mirrored crop.
PARITY_VIEWS = ("photo", "mirror", "crop", "mirror_crop")


def parity_views(images: np.ndarray) -> np.ndarray:
    """:data:`PARITY_VIEWS` of uint8 images ``(n, size, size, 3)``, photo by photo (deterministic)."""
    size = images.shape[1]
    margin = size // 16
    crops = tf.image.resize(images[:, margin:size - margin, margin:size - margin], [size, size], method="bilinear")
    crops = np.clip(np.rint(crops.numpy()), 0, 255).astype(np.uint8)
    views = np.stack([images, images[:, :, ::-1], crops, crops[:, :, ::-1]], axis=1)
    return views.reshape(-1, size, size, 3)


def parity_gate(model, int8: TFLiteModel, photos: PreparedPhotos, required: float, mirror: float,
                rule: dict | None = None, prototypes: np.ndarray | None = None, batch: int = 64) -> dict:
    """Does the int8 model give Keras's answer? Compared on every held-out photo (validation and test) in
    :data:`PARITY_VIEWS`, batch by batch (no copy of the whole set), both models answering as the bundle does
    (unsure answers averaged with the mirror image's, ``mirror``; then the unknown-place ``rule``). The answer is
    the top-1 place, or "unknown place" where the rule rejects the photo: two models that both answer "unknown"
    agree, whichever place each would have ranked first (that ranking is never shown). Passes when the 95 % Wilson
    lower bound of the answers' agreement is at least ``required``: hundreds of photos times four views make the
    bound tight, so a few answers flipping between runs do not flip the decision. ``model`` is the Keras model
    that ships (scores and features); the top-1 agreement alone is reported too."""
    keras_run = keras_runner(model, batch)

    def answers(run, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, features = run_with_mirror(run, views, mirror)
        top1 = probabilities.argmax(1)
        return top1, np.where(apply_rejection(probabilities, rule, features, prototypes), -1, top1)

    agree = agree_top1 = total = 0
    for photos_batch in (b for name in ("val", "test") for b in photos.arrays[name].batches(batch)):
        views = parity_views(photos_batch)
        keras_top1, keras_answer = answers(keras_run, views)
        int8_top1, int8_answer = answers(int8.run, views)
        agree += int((keras_answer == int8_answer).sum())
        agree_top1 += int((keras_top1 == int8_top1).sum())
        total += len(views)
    lower = evaluate.wilson_interval(agree, total)[0]
    return {"photos": len(photos.arrays["val"]) + len(photos.arrays["test"]), "views_per_photo": len(PARITY_VIEWS),
            "views": total, "agreeing": agree, "agreement": round(agree / total, 5),
            "agreement_lower_95": round(lower, 5), "required": required, "passed": bool(lower >= required),
            "compares": "answers (top-1 place, or unknown place under the rule)" if rule else "top-1 place",
            "top1_agreement": round(agree_top1 / total, 5)}


def landmark_threshold(landmark_scores: np.ndarray, target: float) -> float:
    """The threshold under which a new landmark photo scores with probability at most ``target`` (split-
    conformal on held-out landmark photos: the k-th lowest of n scores, k = floor(target * (n + 1)); photos
    scoring below it are rejected). With too few photos for that promise, the lowest score (none rejected)."""
    scores = np.sort(np.asarray(landmark_scores, dtype=np.float64))
    rank = int(np.floor(target * (len(scores) + 1)))
    return float(scores[max(rank, 1) - 1]) if len(scores) else 0.0


def calibrate_unknown_place(config: TrainConfig, photos: PreparedPhotos, int8: ShippedModel,
                            negatives: list[Example], mirror: float, out_dir: Path,
                            refit_head=None) -> tuple[dict | None, dict | None]:
    """The unknown-place rule that ships and its measured rates, or (None, None) without negatives. A model
    with a "none" output (``refit_head`` given) is calibrated on landmark photos
    (:func:`calibrate_with_none_output`); otherwise on the negatives, as follows.

    Calibrated on the int8 model (the one that ships), on the validation photos and every negative photo. Its
    rates on new photos are measured by cross-fitting: the negatives are dealt into folds (near-duplicates
    together); a rule calibrated without one fold is counted on that fold and on the test photos, so each
    negative is counted once, by a rule that did not see it."""
    if photos.negatives is None:
        return None, None
    prototypes = None
    if int8.runner.has_features:  # prototypes from the training photos' features, as the shipped model sees them
        train_features = run_batched(int8.runner.run, photos.arrays["train"], mirror)[1]
        prototypes = evaluate.place_prototypes(train_features, photos.targets["train"], config.prototypes_per_place,
                                               len(photos.labels), config.seed)

    fold = fold_of_each(negatives, config.rejection_folds, config.near_dup_distance)
    if refit_head is not None:
        return calibrate_with_none_output(config, photos, int8, prototypes, fold, refit_head, out_dir)

    def features(name, rows=slice(None)):
        return int8.features[name][rows] if prototypes is not None else None

    def calibrate(rows) -> dict:
        return evaluate.calibrate_rejection(int8.probs["val"], int8.probs["negatives"][rows],
                                            config.target_false_accept, features("val"),
                                            features("negatives", rows), prototypes)

    def rejected(name, fitted: dict, rows=slice(None)) -> np.ndarray:
        return apply_rejection(int8.probs[name][rows], fitted, features(name, rows), prototypes)

    rule = calibrate(slice(None))
    if rule["kind"] in FEATURE_RULES:
        np.save(out_dir / PROTOTYPES_FILE, prototypes.astype(np.float16))
        rule["prototypes_file"] = PROTOTYPES_FILE
    folds, unseen_rejected = [], []
    for held_out in np.unique(fold):
        fitted = calibrate(fold != held_out)
        unseen_rejected.append(rejected("negatives", fitted, fold == held_out))
        folds.append({"held_out": int((fold == held_out).sum()), "kind": fitted["kind"],
                      "threshold": fitted["threshold"],
                      "landmarks_wrongly_rejected": float(rejected("test", fitted).mean())})
    kinds = [kind for kind in RULE_KINDS if prototypes is not None or kind not in FEATURE_RULES]
    tradeoff = {kind: evaluate.unknown_place_tradeoff(
        rejection_score(int8.probs["test"], kind, features("test"), prototypes),
        rejection_score(int8.probs["negatives"], kind, features("negatives"), prototypes)) for kind in kinds}
    return rule, {
        "rule": rule,
        "tradeoff": tradeoff,
        "negatives": len(negatives),
        "negatives_rejected": float(np.concatenate(unseen_rejected).mean()),
        "landmarks_wrongly_rejected": float(np.mean([f["landmarks_wrongly_rejected"] for f in folds])),
        "shipped_rule_landmarks_wrongly_rejected": float(rejected("test", rule).mean()),
        "folds": folds,
    }


def calibrate_with_none_output(config: TrainConfig, photos: PreparedPhotos, int8: ShippedModel,
                               prototypes: np.ndarray, fold: np.ndarray, refit_head,
                               out_dir: Path) -> tuple[dict, dict]:
    """The rule of a model that learned "no known place" from the negatives, and its honest rates.

    The threshold of each rule kind is set on the validation photos (:func:`landmark_threshold`, to reject at
    most ``target_landmark_rejection`` of new landmark photos); negatives play no part in it. Since the head
    trained on every negative, the share of new negatives rejected is measured by cross-fitting: for each fold
    of negatives (near duplicates together) a head re-fitted without it scores that fold, so each negative is
    counted once, by a model and a threshold that never saw it; the same heads give the test photos' rejection
    rate. The kind that rejects the most negatives so measured ships, with its threshold from the shipped
    model's own validation answers (int8, as served)."""
    count = len(photos.labels)

    def scores(kind: str, probs: dict, name: str, rows=slice(None)) -> np.ndarray:
        return rejection_score(probs[name][rows], kind, int8.features[name][rows], prototypes)

    folds, fold_probs = [], {}
    for held_out in tqdm(np.unique(fold), desc="unknown place: cross-fitting", unit="fold",
                         disable=not config.show_progress):
        head = refit_head(np.flatnonzero(fold != held_out))
        probs = {name: np.asarray(head(int8.features[name], training=False))[:, :count]
                 for name in ("val", "test", "negatives")}
        fold_probs[int(held_out)] = probs
        row = {"held_out": int((fold == held_out).sum()), "kinds": {}}
        for kind in RULE_KINDS:
            threshold = landmark_threshold(scores(kind, probs, "val"), config.target_landmark_rejection)
            row["kinds"][kind] = {
                "threshold": threshold,
                "rejected_negatives": int((scores(kind, probs, "negatives", fold == held_out) < threshold).sum()),
                "landmarks_wrongly_rejected": float((scores(kind, probs, "test") < threshold).mean())}
        folds.append(row)
    measured = {kind: {"negatives_rejected": sum(f["kinds"][kind]["rejected_negatives"] for f in folds) / len(fold),
                       "landmarks_wrongly_rejected": float(np.mean([f["kinds"][kind]["landmarks_wrongly_rejected"]
                                                                   for f in folds]))} for kind in RULE_KINDS}
    kind = max(RULE_KINDS, key=lambda k: (measured[k]["negatives_rejected"], -measured[k]["landmarks_wrongly_rejected"]))
    val_scores = scores(kind, int8.probs, "val")
    rule = {"kind": kind, "threshold": landmark_threshold(val_scores, config.target_landmark_rejection),
            "target_landmark_rejection": config.target_landmark_rejection, "none_output": True}
    rule["calibration_landmark_rejected"] = float((val_scores < rule["threshold"]).mean())
    if kind in FEATURE_RULES:
        np.save(out_dir / PROTOTYPES_FILE, prototypes.astype(np.float16))
        rule["prototypes_file"] = PROTOTYPES_FILE
    # Each negative's scores from the head that never saw it; the test photos' from the shipped model.
    unseen = {k: np.empty(len(fold)) for k in RULE_KINDS}
    for held_out, probs in fold_probs.items():
        for k in RULE_KINDS:
            unseen[k][fold == held_out] = scores(k, probs, "negatives", fold == held_out)
    tradeoff = {k: evaluate.unknown_place_tradeoff(scores(k, int8.probs, "test"), unseen[k]) for k in RULE_KINDS}
    return rule, {
        "rule": rule,
        "method": "none output; threshold on validation landmark photos; negatives cross-fitted",
        "tradeoff": tradeoff,
        "candidates": measured,
        "negatives": len(fold),
        "negatives_rejected": measured[kind]["negatives_rejected"],
        "landmarks_wrongly_rejected": measured[kind]["landmarks_wrongly_rejected"],
        "shipped_rule_landmarks_wrongly_rejected": float((scores(kind, int8.probs, "test") < rule["threshold"]).mean()),
        "folds": [{"held_out": f["held_out"], "kind": kind, **f["kinds"][kind]} for f in folds],
    }


def calibrate_vetting(config: TrainConfig, photos: PreparedPhotos, int8: ShippedModel, rule: dict | None,
                      prototypes: np.ndarray | None) -> dict:
    """How sure the shipped model must be for its answer to label a photo, or to contradict a photo's label
    (placeid.vetting): the threshold from the validation photos (:func:`evaluate.label_threshold`,
    ``auto_label_precision``), and what it does on the test photos (the labels' precision, the share
    auto-labelled, the share flagged suspect), as served: int8, mirror-averaged, under the run's rule."""
    def answers(name: str) -> tuple[np.ndarray, np.ndarray]:
        probs = int8.probs[name]
        return probs, apply_rejection(probs, rule, int8.features[name], prototypes)

    probs, unknown = answers("val")
    known, targets = ~unknown, photos.targets["val"]
    threshold = evaluate.label_threshold(probs[known].max(axis=1), probs[known].argmax(axis=1) == targets[known],
                                         config.auto_label_precision, config.auto_label_min_photos)
    test_probs, test_unknown = answers("test")
    return {"auto_label_threshold": threshold, "target_precision": config.auto_label_precision,
            "calibration": evaluate.vetting_answers(probs, targets, unknown, threshold),
            "test": evaluate.vetting_answers(test_probs, photos.targets["test"], test_unknown, threshold)}


def write_run_outputs(config: TrainConfig, photos: PreparedPhotos, examples: list[Example], metrics: dict,
                      history: dict, out_dir: Path) -> None:
    """Labels, metrics, the split, the training history and the plots: kept whether or not the run ships."""
    (out_dir / "labels.json").write_text(json.dumps(photos.labels, indent=1))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out_dir / "split.json").write_text(json.dumps({"seed": config.seed, "fold": config.fold,
                                                    "near_dup_distance": config.near_dup_distance,
                                                    "examples": [e.summary() for e in examples]}, indent=1))
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    evaluate.plot_history(history, plots / "training_curves.png")
    evaluate.plot_confusion(metrics["tflite_int8"]["confusion_matrix"], photos.labels, plots / "confusion_matrix.png")
    evaluate.plot_per_place_f1(metrics["tflite_int8"]["per_place"], plots / "per_place_f1.png")
    unknown = metrics.get("unknown_place")
    if unknown:
        evaluate.plot_unknown_place_tradeoff(
            unknown["tradeoff"], (unknown["rule"]["kind"], unknown["landmarks_wrongly_rejected"],
                                  unknown["negatives_rejected"]), plots / "unknown_place_tradeoff.png")


def write_manifest(config: TrainConfig, examples: list[Example], places: list[dict], labels: list[str],
                   rule: dict | None, mirror: float, metrics: dict, out_dir: Path) -> dict:
    """The bundle's places snapshot and manifest (version, model, preprocessing, rule, metrics, file hashes)."""
    known = set(labels)
    snapshot = [p for p in places if p["place_id"] in known]
    (out_dir / "places.json").write_text(json.dumps(snapshot, ensure_ascii=False, indent=1))
    created = datetime.now(timezone.utc)
    data_fingerprint = fingerprint(examples)
    label = "paper" if config.model == "paper" else config.backbone.replace(".", "")  # e.g. efficientnet_lite0
    version = f"{created:%Y%m%dT%H%M%SZ}-{label}-{data_fingerprint[:8]}"
    manifest = {
        "version": version,
        "created": created.isoformat(timespec="seconds"),
        "model": config.model if config.model == "paper" else config.backbone,
        "model_file": "model_int8.tflite",
        "input_size": config.size,
        "preprocessing": dict(PREPROCESSING, scale=backbone_scale(None if config.model == "paper" else config.backbone)),
        "labels_file": "labels.json",
        "places_file": "places.json",
        "rejection": rule,
        "mirror_below_margin": mirror,
        "metrics": {"top1": metrics["tflite_int8"]["top1"], "top3": metrics["tflite_int8"]["top3"],
                    "macro_f1": metrics["tflite_int8"]["macro_f1"],
                    "int8_keras_top1_agreement": metrics["int8_keras_top1_agreement"],
                    "parity_agreement_lower_95": metrics["parity"]["agreement_lower_95"],
                    **({"negatives_rejected": metrics["unknown_place"]["negatives_rejected"],
                        "landmarks_wrongly_rejected": metrics["unknown_place"]["landmarks_wrongly_rejected"]}
                       if rule else {})},
        "parity": metrics["parity"],  # registry.register refuses a run whose gate failed
        # placeid.vetting: the top-1 probability from which the model labels a photo or contradicts its label
        "vetting": {"auto_label_threshold": metrics["vetting"]["auto_label_threshold"],
                    "target_precision": metrics["vetting"]["target_precision"],
                    "test_precision": metrics["vetting"]["test"]["auto_label_precision"],
                    "test_precision_95": metrics["vetting"]["test"]["auto_label_precision_95"],
                    "test_auto_labelled_share": metrics["vetting"]["test"]["auto_labelled_share"]},
        "data_fingerprint": data_fingerprint,
        "config": {k: v for k, v in asdict(config).items() if k != "show_progress"},
        "files": {},
    }
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and path.name != "manifest.json" and "tensorboard" not in path.parts:
            manifest["files"][path.relative_to(out_dir).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def default_weights(config: TrainConfig, weights_dir: Path) -> str | None:
    """The backbone weights file for ``config`` (``--backbone-weights`` wins); TrainingFailed when it is missing,
    before any photo is read."""
    if config.model == "paper":
        return None
    if config.backbone_weights:
        chosen = config.backbone_weights
    else:
        chosen = str(weights_dir / BACKBONES[config.backbone]["weights"])
    if chosen != "imagenet" and not Path(chosen).is_file():
        raise TrainingFailed(f"backbone weights not found: {chosen} (set PLACEID_WEIGHTS to the folder that holds "
                             f"{BACKBONES[config.backbone]['weights']}, or pass --backbone-weights FILE|imagenet)")
    return chosen
