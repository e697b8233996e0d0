"""The split (group-aware, stratified, deterministic) and the unknown-place rule."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from placeid.hashing import hamming_distance
from training.dataset import Example, class_weights, fingerprint, fold_of_each, from_folder, split_examples
from placeid_edge.rejection import apply_rejection
from training.evaluate import calibrate_rejection, classification_metrics

PLACES = ["colosseum", "taj-mahal", "petra", "louvre", "hoi-an-ancient-town", "great-wall-of-china"]


@pytest.fixture(scope="module")
def examples(data_dir):
    return from_folder(data_dir / "world30" / "images", places=PLACES)


def test_no_near_duplicate_group_crosses_splits(examples):
    split_examples(examples, seed=0, distance=8)
    for i, first in enumerate(examples):
        for second in examples[i + 1:]:
            if hamming_distance(first.phash, second.phash) <= 8:
                assert first.group == second.group and first.split == second.split, (first.source, second.source)
    groups = Counter(e.group for e in examples)
    assert max(groups.values()) >= 2  # world30 does hold near-duplicates: the check above was exercised


def test_split_is_stratified_and_deterministic(examples):
    split_examples(examples, seed=0)
    first = [e.split for e in examples]
    split_examples(examples, seed=0)
    assert [e.split for e in examples] == first
    for place in PLACES:
        counts = Counter(e.split for e in examples if e.label == place)
        total = sum(counts.values())
        assert set(counts) == {"train", "val", "test"}
        assert abs(counts["test"] / total - 0.15) < 0.06 and abs(counts["val"] / total - 0.15) < 0.06
    split_examples(examples, seed=1)
    assert [e.split for e in examples] != first
    assert fingerprint(examples) == fingerprint(list(reversed(examples)))


def test_folds_have_disjoint_test_photos_and_keep_groups_whole(examples):
    """Folds 0, 1, 2 deal each place's test share from a different stretch of its groups: the test photos of two
    folds barely overlap (only where a group straddles a boundary), the proportions hold, groups stay whole."""
    tests = []
    for fold in range(3):
        split_examples(examples, seed=0, distance=8, fold=fold)
        tests.append({e.sha256 for e in examples if e.split == "test"})
        for place in PLACES:
            counts = Counter(e.split for e in examples if e.label == place)
            assert abs(counts["test"] / sum(counts.values()) - 0.15) < 0.06
        assert all(len({e.split for e in examples if e.group == g}) == 1 for g in {e.group for e in examples})
    for i in range(3):
        for j in range(i + 1, 3):
            assert len(tests[i] & tests[j]) <= 0.1 * len(tests[i]), (i, j)


def test_cross_fitting_folds_keep_near_duplicates_together():
    """Folds are dealt by content (the same photos give the same folds in any order) and a near-duplicate group
    (pHash within the distance) never straddles two folds."""
    distinct = [int(h) for h in np.random.default_rng(0).integers(0, 2**63, 40)]  # ~32 bits apart
    phashes = [f"{h:016x}" for h in distinct] + [f"{distinct[0] ^ 1:016x}", f"{distinct[0] ^ 6:016x}"]  # copies of #0
    photos = [Example(f"p{i}", "", f"{i:064x}", phash) for i, phash in enumerate(phashes)]
    folds = fold_of_each(photos, 5, distance=2)
    assert folds.min() >= 0 and folds.max() < 5 and len(set(folds.tolist())) > 1
    assert folds[-2] == folds[-1] == folds[0]
    assert fold_of_each(list(reversed(photos)), 5, distance=2).tolist() == list(reversed(folds.tolist()))


def test_class_weights_balance_classes():
    weights = class_weights([0, 0, 0, 1], 2)
    assert weights[1] == pytest.approx(3 * weights[0])
    assert (3 * weights[0] + weights[1]) / 4 == pytest.approx(1.0)


def test_rejection_rule_meets_its_false_accept_target():
    rng = np.random.default_rng(0)
    landmarks = rng.dirichlet(np.r_[30.0, np.ones(9)], size=400)  # confident
    negatives = rng.dirichlet(np.ones(10) * 2, size=200)  # spread out
    rule = calibrate_rejection(landmarks, negatives, target_false_accept=0.05)
    assert rule["kind"] in ("max_prob", "margin")
    assert apply_rejection(negatives, rule).mean() >= 0.95
    assert apply_rejection(landmarks, rule).mean() < 0.05
    strict = calibrate_rejection(landmarks, negatives, target_false_accept=0.0)
    assert apply_rejection(negatives, strict).all()


def test_threshold_keeps_its_promise_on_new_negatives():
    """The split-conformal threshold: calibrated on n negatives, it rejects a *new* negative with probability
    >= 1 - target; the naive quantile (reject exactly 90% of what it saw) falls short of that on average."""
    from training.evaluate import rejection_threshold

    rng = np.random.default_rng(0)
    assert rejection_threshold(np.arange(9.0), 0.10) == np.nextafter(8.0, np.inf)  # rank ceil(0.9 * 10) = 9
    assert rejection_threshold(np.arange(3.0), 0.10) == np.nextafter(2.0, np.inf)  # too few: rejects all seen
    conformal, naive = [], []
    for _ in range(2000):
        seen, new = rng.normal(size=50), rng.normal(size=200)
        conformal.append((new < rejection_threshold(seen, 0.10)).mean())
        naive.append((new < np.nextafter(np.sort(seen)[44], np.inf)).mean())  # 45 of 50 seen rejected
    assert np.mean(conformal) >= 0.90 > np.mean(naive)


def test_classification_metrics_on_a_known_confusion():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    truth = np.array([0, 1, 1, 2])
    metrics = classification_metrics(probs, truth, ["a", "b", "c"])
    assert metrics["top1"] == 0.75 and metrics["top3"] == 1.0
    assert metrics["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert metrics["per_place"]["a"]["precision"] == 0.5 and metrics["per_place"]["b"]["recall"] == 0.5


def test_flips_only_where_the_place_allows():
    import tensorflow as tf

    from training.train import TrainConfig, augment, effective_mirror_margin, flippable_classes

    config = TrainConfig(no_flip_places=["louvre"])
    assert flippable_classes(config, ["eiffel-tower", "louvre"]).tolist() == [True, False]
    assert not flippable_classes(TrainConfig(flip=False), ["eiffel-tower"]).any()
    # The mirror pass at inference needs every place to be mirror-safe.
    assert effective_mirror_margin(config, ["eiffel-tower", "louvre"]) == 0.0
    assert effective_mirror_margin(config, ["eiffel-tower"]) == config.mirror_below_margin == 0.5
    # A left-dark, right-bright image keeps its sides when flipping is not allowed.
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 255
    tf.random.set_seed(0)
    for _ in range(10):
        out = augment(tf.constant(image), 64, False).numpy()
        assert out[:, :16].mean() < out[:, -16:].mean()
    flipped = [augment(tf.constant(image), 64, True).numpy() for _ in range(20)]
    assert any(out[:, :16].mean() > out[:, -16:].mean() for out in flipped)


def test_prototype_rule_rejects_what_looks_like_no_known_place():
    """Features near a place's prototypes are known; features pointing elsewhere are unknown, even when the
    softmax is sure."""
    from training.evaluate import place_prototypes

    rng = np.random.default_rng(0)
    centres = np.eye(3, 16)  # three places, each a direction in feature space
    targets = np.repeat(np.arange(3), 20)
    features = centres[targets] + rng.normal(0, 0.1, (60, 16))
    prototypes = place_prototypes(features, targets, per_place=2)
    assert prototypes.shape == (6, 16)
    # Stored place by place, per_place rows each: a place with one photo repeats it, one with none is zeros.
    few = place_prototypes(features[:21], targets[:21], per_place=2, num_classes=3)
    assert np.allclose(few[2], few[3]) and np.allclose(few[3], features[20] / np.linalg.norm(features[20]))
    assert not few[4:].any()
    landmarks = centres[np.arange(3).repeat(5)] + rng.normal(0, 0.1, (15, 16))
    negatives = np.abs(rng.normal(0, 1, (40, 16))) * (np.arange(16) >= 3)  # other directions
    confident = np.tile([0.98, 0.01, 0.01], (40, 1))  # the softmax cannot tell them apart
    rule = calibrate_rejection(np.tile([0.98, 0.01, 0.01], (15, 1)), confident, 0.05, landmarks, negatives,
                               prototypes)
    assert rule["kind"] == "prototype_cosine"
    assert apply_rejection(confident, rule, negatives, prototypes).mean() >= 0.95
    assert not apply_rejection(confident[:15], rule, landmarks, prototypes).any()
    with pytest.raises(ValueError, match="needs the model's features"):
        apply_rejection(confident, rule)


def test_prototype_and_prob_rule_keeps_a_half_familiar_photo_the_classifier_is_sure_of():
    """``prototype_and_prob`` = cosine to the nearest prototype + PROB_WEIGHT x top-1 probability: of two photos
    equally far from every prototype, the one the classifier is sure of scores higher."""
    from placeid_edge.rejection import PROB_WEIGHT, rejection_score

    prototypes = np.repeat(np.eye(3, 8), 2, axis=0)
    features = np.array([[1.0, 1.0, 0, 0, 0, 0, 0, 0], [1.0, 1.0, 0, 0, 0, 0, 0, 0]])  # between places 0 and 1
    probabilities = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]])
    cosine = rejection_score(probabilities, "prototype_cosine", features, prototypes)
    assert cosine == pytest.approx([np.sqrt(0.5)] * 2)
    both = rejection_score(probabilities, "prototype_and_prob", features, prototypes)
    assert both == pytest.approx(cosine + PROB_WEIGHT * np.array([0.9, 0.4]))
    rule = {"kind": "prototype_and_prob", "threshold": float(np.sqrt(0.5) + PROB_WEIGHT * 0.6)}
    assert apply_rejection(probabilities, rule, features, prototypes).tolist() == [False, True]


def test_prototype_and_known_rule_adds_the_known_place_share_to_the_cosine():
    """``prototype_and_known`` = cosine + KNOWN_WEIGHT x the sum of the places' probabilities (1 - p(none) for a
    model with a "no known place" output): of two photos equally close to a prototype, the one the model gives to
    "none" is unknown; a model without that output (probabilities summing to 1) ranks photos by cosine alone."""
    from placeid_edge.rejection import KNOWN_WEIGHT, rejection_score

    prototypes = np.repeat(np.eye(3, 8), 2, axis=0)
    features = np.array([[1.0, 0.2, 0, 0, 0, 0, 0, 0], [1.0, 0.2, 0, 0, 0, 0, 0, 0], [1.0, 1.0, 0, 0, 0, 0, 0, 0]])
    with_none = np.array([[0.85, 0.05, 0.05], [0.2, 0.05, 0.05], [0.85, 0.05, 0.05]])  # rows 0, 2: p(none) 0.05
    cosine = rejection_score(with_none, "prototype_cosine", features, prototypes)
    known = rejection_score(with_none, "prototype_and_known", features, prototypes)
    assert known == pytest.approx(cosine + KNOWN_WEIGHT * np.array([0.95, 0.3, 0.95]), abs=1e-6)
    rule = {"kind": "prototype_and_known", "threshold": float(cosine[0] + KNOWN_WEIGHT * 0.6)}
    assert apply_rejection(with_none, rule, features, prototypes).tolist() == [False, True, True]
    summing_to_one = with_none / with_none.sum(axis=1, keepdims=True)
    assert rejection_score(summing_to_one, "prototype_and_known", features, prototypes) == \
        pytest.approx(cosine + KNOWN_WEIGHT, abs=1e-6)


def test_snapped_kernels_are_exactly_what_the_int8_model_stores():
    """After snapping, the int8 conversion stores each kernel without further rounding: dequantized TFLite
    weights equal the Keras kernels (so Keras and int8 differ only by activation rounding)."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from training.export import to_tflite
    from training.models import snap_weights_to_int8

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="dense")(x)
    model = keras.Model(inputs, outputs)
    before = {name: model.get_layer(name).get_weights()[0] for name in ("conv", "depthwise", "dense")}
    assert snap_weights_to_int8(model) == 3
    kernels = {name: model.get_layer(name).get_weights()[0] for name in before}
    for name, kernel in kernels.items():
        assert 0 < np.abs(kernel - before[name]).max() <= np.abs(before[name]).max() / 127 / 2 + 1e-7
    images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype(np.uint8)
    interpreter = Interpreter(model_content=to_tflite(model, "int8", images))
    # One photo per invocation, a fixed batch (LiteRT.js refuses a dynamic one)
    assert interpreter.get_input_details()[0]["shape_signature"].tolist() == [1, 16, 16, 3]
    stored = []
    for detail in interpreter.get_tensor_details():
        scales = detail["quantization_parameters"]["scales"]
        if detail["dtype"] == np.int8 and len(detail["shape"]) >= 2 and len(scales) > 1:
            values = interpreter.get_tensor(detail["index"]).astype(np.float32)
            axis = detail["quantization_parameters"]["quantized_dimension"]
            shape = [1] * values.ndim
            shape[axis] = -1
            stored.append(np.sort((values * scales.reshape(shape)).ravel()))
    expected = [np.sort(kernel.ravel()) for kernel in kernels.values()]
    assert len(stored) == 3
    for got, want in zip(sorted(stored, key=len), sorted(expected, key=len)):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_fine_tuning_starts_at_a_layer_the_backbone_has():
    from training.models import build_transfer, unfreeze_top

    built = build_transfer(3, 32, "mobilenet_v2_0.35", None)
    with pytest.raises(ValueError, match="no layer 'block_99_expand'"):
        unfreeze_top(built.backbone, "block_99_expand")
    trainable = unfreeze_top(built.backbone, "block_16_expand")
    assert trainable == sum(layer.trainable for layer in built.backbone.layers) > 0
    assert not built.backbone.get_layer("block_15_expand").trainable
    assert not any(layer.trainable for layer in built.backbone.layers if "_BN" in layer.name or "bn" in layer.name)


def test_train_config_is_the_one_source_of_training_defaults():
    """The command line, the benchmarks and the tests start from TrainConfig: the paper's size, the fast preset
    and the near-duplicate distance come from one place, and the command line restates none of them."""
    from placeid.config import REPO_ROOT, Settings
    from training.train import TrainConfig

    from training.models import BACKBONES

    assert TrainConfig.for_model("paper").size == TrainConfig.PAPER_SIZE
    assert TrainConfig().size == BACKBONES[TrainConfig.backbone]["train_size"]
    assert TrainConfig(backbone="efficientnet_lite2").size == 260 and TrainConfig(size=300).size == 300
    with pytest.raises(ValueError, match="unknown backbone"):
        TrainConfig(backbone="resnet")
    assert TrainConfig.for_model("paper", seed=None).seed == TrainConfig.seed  # unset options keep the default
    fast = TrainConfig().fast()
    assert (fast.size, fast.fine_tune_epochs, fast.augment_views) == (TrainConfig.FAST_SIZE, 0, 1)
    assert fast.head_epochs < TrainConfig.head_epochs
    assert TrainConfig.for_model("paper").fast().size == TrainConfig.PAPER_SIZE
    assert TrainConfig().near_dup_distance == Settings().near_dup_distance
    cli = (REPO_ROOT / "placeid_cli" / "main.py").read_text()
    for literal in (f"{TrainConfig.min_int8_agreement}", "default=256", "(64 if", "96)"):
        assert literal not in cli, literal


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite2"])
def test_efficientnet_lite_backbones_scale_their_input_as_they_were_trained(backbone, data_dir):
    """The whole-model EfficientNet-Lite files from the weights folder: the transfer model's features are the
    file's own model on (x - 127) / 128, average-pooled (the official preprocessing), inside the model."""
    import keras

    from placeid.config import Settings
    from placeid_edge.preprocess import prepare_image
    from training.models import build_transfer
    from training.train import TrainConfig, default_weights

    config = TrainConfig(backbone=backbone)
    weights = default_weights(config, Settings.from_env().weights_dir)
    assert weights.endswith(".keras") and config.size == {"efficientnet_lite0": 224, "efficientnet_lite2": 260}[backbone]
    built = build_transfer(3, 96, backbone, weights)
    photo = sorted((data_dir / "world30" / "images" / "colosseum").glob("*.jpg"))[0]
    image = prepare_image(photo.read_bytes(), 96)[None].astype(np.float32)
    reference = keras.models.load_model(weights, compile=False)((image - 127.0) / 128.0).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(built.feature_model.predict(image, verbose=0), reference, rtol=1e-4, atol=1e-4)
    assert built.model.predict(image, verbose=0).shape == (1, 3)


def test_disk_arrays_round_trip_and_read_back_in_any_order(tmp_path):
    """What training caches on disk reads back exactly: slices, rows in any order, batches; and it is a valid
    .npy file for inspection."""
    from training.disk_arrays import DiskArray

    rows = np.random.default_rng(0).integers(0, 255, (37, 6, 6, 3), dtype=np.uint8)
    array = DiskArray.write(tmp_path / "photos.npy", (rows[i:i + 10] for i in range(0, 37, 10)), (6, 6, 3), np.uint8)
    assert array.shape == (37, 6, 6, 3) and np.array_equal(np.load(tmp_path / "photos.npy"), rows)
    assert np.array_equal(array.read(5, 20), rows[5:20]) and np.array_equal(array.read(30), rows[30:])
    assert np.array_equal(array.take([36, 0, 7, 7]), rows[[36, 0, 7, 7]])
    assert np.array_equal(np.concatenate(list(array.batches(8))), rows)
    with pytest.raises(IndexError):
        array.take([37])
    with pytest.raises(ValueError):
        DiskArray.write(tmp_path / "bad.npy", [rows[:2]], (6, 6, 4), np.uint8)


def test_feature_batches_cover_every_row_once_an_epoch_with_its_target_and_weight(tmp_path):
    """The head's training batches, read from several feature files: every row once per epoch, with its own
    target and class weight, reshuffled between epochs."""
    from training.disk_arrays import DiskArray
    from training.train import FeatureBatches

    first = DiskArray.write(tmp_path / "a.npy", [np.arange(10, dtype=np.float16)[:, None] * [1, 1]], (2,), np.float16)
    second = DiskArray.write(tmp_path / "b.npy", [np.arange(10, 17, dtype=np.float16)[:, None] * [1, 1]], (2,),
                             np.float16)
    targets = np.arange(17) % 3
    batches = FeatureBatches([first, second], targets, {0: 0.5, 1: 1.0, 2: 2.0}, batch_size=5, seed=0)
    assert len(batches) == 4
    orders = []
    for _ in range(2):
        seen = []
        for index in range(len(batches)):
            features, batch_targets, weights = batches[index]
            assert features.dtype == np.float32 and np.array_equal(batch_targets, targets[features[:, 0].astype(int)])
            assert np.array_equal(weights, np.array([0.5, 1.0, 2.0])[batch_targets])
            seen.extend(features[:, 0].astype(int))
        assert sorted(seen) == list(range(17))
        orders.append(seen)
        batches.on_epoch_end()
    assert orders[0] != orders[1]


def test_augmenting_views_does_not_grow_memory():
    """Training augments every photo of the collection: memory must stay flat however many it augments. Random
    ops run eagerly, photo by photo, keep a kernel per call once a global seed is set (290 KB a photo here);
    the compiled batch augmenter does not. Measured in a fresh process, after a warm-up."""
    import subprocess
    import sys

    script = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, psutil, keras
from training.train import _batch_augmenter
keras.utils.set_random_seed(0)
photos = np.random.default_rng(0).integers(0, 255, (32, 96, 96, 3), dtype=np.uint8)
augment = _batch_augmenter(96)
flips = np.ones(32, bool)
for _ in range(8):
    augment(photos, flips)
before = psutil.Process().memory_info().rss
for _ in range(40):
    views = augment(photos, flips).numpy()
assert views.shape == photos.shape and 0 <= views.min() and views.max() <= 255
print((psutil.Process().memory_info().rss - before) / 2**20)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    growth_mib = float(result.stdout.strip().splitlines()[-1])
    assert growth_mib < 20, f"memory grew {growth_mib:.0f} MiB over 1,280 augmented photos"


def test_label_threshold_is_the_lowest_probability_keeping_the_precision():
    """Answers ranked from the most confident down: the threshold is the lowest probability at which the trusted
    ones are still right often enough, never cutting between equal probabilities, and None when even the surest
    answers are too often wrong or too few."""
    from training.evaluate import label_threshold

    top = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.90, 0.80, 0.70])
    right = np.array([1, 1, 1, 1, 1, 0, 1, 0], dtype=bool)
    assert label_threshold(top, right, 1.0, 1) == pytest.approx(0.95)
    assert label_threshold(top, right, 0.85, 1) == pytest.approx(0.80)  # 6 of 7 right
    assert label_threshold(top, right, 1.0, 6) is None  # 100 % only holds on 5 photos
    tied = np.array([0.99, 0.95, 0.95, 0.5])
    assert label_threshold(tied, np.array([1, 1, 0, 1], dtype=bool), 0.9, 1) == pytest.approx(0.99)
    assert label_threshold(top, np.zeros(8, dtype=bool), 0.5, 1) is None


def test_vetting_answers_count_labels_and_suspects():
    """Photos the rule answers unknown are suspects and never labelled; a confident answer is a label (right or
    wrong) and, when it is another place than the photo's label, a suspect too."""
    from training.evaluate import vetting_answers

    probs = np.array([[0.97, 0.02, 0.01], [0.05, 0.94, 0.01], [0.6, 0.3, 0.1], [0.96, 0.02, 0.02]])
    targets = np.array([0, 0, 0, 2])
    unknown = np.array([False, False, False, True])
    found = vetting_answers(probs, targets, unknown, 0.9)
    assert found["auto_labelled"] == 2 and found["auto_label_precision"] == 0.5
    assert found["suspect"] == 2 and found["suspect_unknown"] == 1 and found["suspect_contradicted"] == 1
    low, high = found["auto_label_precision_95"]
    assert low < 0.5 < high
    never = vetting_answers(probs, targets, unknown, None)
    assert never["auto_labelled"] == 0 and never["auto_label_precision"] is None and never["suspect"] == 1
