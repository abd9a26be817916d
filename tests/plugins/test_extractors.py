"""The built-in extractors through the sample pipeline: what their rows hold, and how bad input is
refused on the caller's thread at the first bad batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from logbus.bus._plugin_manager import UnknownPluginError
from logbus.kernels import images_to_uint8_reference
from logbus.records import Table
from logbus.samples._pipeline import pipeline_for

IGNORE = -100


def decode(path) -> np.ndarray:
    with PILImage.open(path) as image:
        return np.asarray(image)


def column(table: Table, name: str) -> list:
    index = table.columns.index(name)
    return [row[index] for row in table.rows]


@pytest.fixture
def make_pipeline():
    pipelines = []

    def make(extractor: str, extractor_options=None, **options):
        pipeline = pipeline_for(extractor, extractor_options, **options)
        pipelines.append(pipeline)
        return pipeline

    yield make
    for pipeline in pipelines:
        pipeline.cleanup()


def finish(pipeline, label: str = "eval", step: int = 0) -> Table:
    table = pipeline.end_pass(label, step=step).result(timeout=60)
    assert table is not None, pipeline.stats
    return table


# -- tokens ----------------------------------------------------------------------------------------
class CharTokenizer:
    """Token ``i`` is the ``i``-th letter."""

    alphabet = "abcdefghij"

    def decode(self, ids: list[int]) -> str:
        assert all(isinstance(i, int) for i in ids)
        return "".join(self.alphabet[i] for i in ids)


def lm_batch(seed: int = 0):
    """Three sequences of 6 tokens over a vocabulary of 10; sample 2 ends in two padding labels;
    logits put a clear maximum on a known prediction at each position."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, 10, (3, 6), generator=generator)
    targets = inputs.clone()
    targets[2, 4:] = IGNORE
    predicted = torch.randint(0, 10, (3, 6), generator=generator)
    predicted[0, :5] = inputs[0, 1:]  # sample 0 predicts every next token right
    logits = torch.randn(3, 6, 10, generator=generator)
    logits.scatter_(2, predicted[..., None], 6.0)
    return inputs, targets, logits, predicted


def text(ids) -> str:
    return "".join(CharTokenizer.alphabet[i] for i in ids)


def test_tokens_rows_decode_text_with_the_causal_shift(make_pipeline):
    inputs, targets, logits, predicted = lm_batch()
    logits[1, 2, 7] = float("nan")  # one NaN logit in sample 1
    pipeline = make_pipeline("tokens", {"tokenizer": CharTokenizer()}, num_samples=None)
    pipeline.submit(inputs, targets, logits)
    table = finish(pipeline)
    assert table.columns == ["id", "input", "target", "prediction", "token_accuracy", "loss", "confidence", "flag"]
    assert column(table, "id") == [0, 1, 2]
    assert column(table, "input") == [text(row) for row in inputs.tolist()]
    # Position t predicts token t + 1: the target is the sequence from its 2nd token, padding left out.
    assert column(table, "target") == [text(inputs[0, 1:].tolist()), text(inputs[1, 1:].tolist()),
                                       text(inputs[2, 1:4].tolist())]
    assert column(table, "prediction")[0] == text(predicted[0, :5].tolist()) == column(table, "target")[0]
    assert column(table, "prediction")[2] == text(predicted[2, :3].tolist())
    assert column(table, "flag") == ["", "nonfinite", ""]
    assert column(table, "loss")[1] is None

    labels = torch.cat([targets[:, 1:], torch.full((3, 1), IGNORE)], 1)
    token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    valid = labels != IGNORE
    expected_loss = (token_loss * valid).sum(1) / valid.sum(1)
    accuracy = ((logits.argmax(-1) == labels) & valid).sum(1) / valid.sum(1)
    for i in (0, 2):
        assert column(table, "loss")[i] == pytest.approx(float(expected_loss[i]), rel=1e-5)
        assert column(table, "token_accuracy")[i] == pytest.approx(float(accuracy[i]))
    assert column(table, "token_accuracy")[0] == 1.0
    confidence = logits.softmax(-1).amax(-1)
    assert column(table, "confidence")[2] == pytest.approx(float(confidence[2, :3].mean()), rel=1e-5)


def test_tokens_with_a_padded_vocabulary_score_as_plain_softmax_does(make_pipeline):
    # -inf logits (a vocabulary padded to a multiple of 8, tokens masked out) are valid: probability 0.
    inputs, targets, logits, _ = lm_batch()
    logits = torch.cat([logits, torch.full((3, 6, 6), float("-inf"))], -1)
    logits[0, 0, :10:2] = float("-inf")  # and a few masked tokens
    pipeline = make_pipeline("tokens", {"tokenizer": CharTokenizer()}, num_samples=None)
    pipeline.submit(inputs, targets, logits)
    table = finish(pipeline)
    labels = torch.cat([targets[:, 1:], torch.full((3, 1), IGNORE)], 1)
    valid = labels != IGNORE
    token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    expected_loss = (token_loss * valid).sum(1) / valid.sum(1)
    accuracy = ((logits.argmax(-1) == labels) & valid).sum(1) / valid.sum(1)
    confidence = (logits.softmax(-1).amax(-1) * valid).sum(1) / valid.sum(1)
    assert column(table, "flag") == ["", "", ""]
    assert column(table, "token_accuracy")[0] == 1.0  # sample 0 predicts every next token right
    np.testing.assert_allclose(column(table, "token_accuracy"), accuracy.numpy(), rtol=1e-6)
    np.testing.assert_allclose(column(table, "loss"), expected_loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(column(table, "confidence"), confidence.numpy(), rtol=1e-5)


def test_tokens_without_shift_align_targets_with_logits(make_pipeline):
    inputs, targets, logits, predicted = lm_batch(seed=1)
    pipeline = make_pipeline("tokens", {"tokenizer": CharTokenizer().decode, "shift": False}, num_samples=2)
    pipeline.submit(inputs, targets, logits)
    table = finish(pipeline)
    assert column(table, "target") == [text(inputs[0].tolist()), text(inputs[1].tolist())]
    assert column(table, "prediction") == [text(predicted[0].tolist()), text(predicted[1].tolist())]
    accuracy = (predicted[:2] == inputs[:2]).float().mean(1)
    np.testing.assert_allclose(column(table, "token_accuracy"), accuracy.numpy(), rtol=1e-6)


def test_tokens_without_a_tokenizer_show_ids(make_pipeline):
    inputs, targets, logits, _ = lm_batch()
    pipeline = make_pipeline("tokens", num_samples=1)
    pipeline.submit(inputs, targets, logits)
    assert column(finish(pipeline), "input") == [" ".join(map(str, inputs[0].tolist()))]


# -- classification / segmentation rows ------------------------------------------------------------
def test_one_hot_and_index_targets_give_the_same_rows(make_pipeline):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 4, 4, generator=generator)
    labels = torch.tensor([0, 2, 1, 2, 0, 1])
    logits = torch.randn(6, 3, generator=generator)
    tables = []
    for targets in (labels, F.one_hot(labels, 3).float(), F.one_hot(labels, 3)):
        pipeline = make_pipeline("classification", {"class_names": ["a", "b", "c"]}, num_samples=None)
        pipeline.submit(images, targets, logits)
        tables.append(finish(pipeline))
    for table in tables:
        assert column(table, "truth") == labels.tolist()
        assert column(table, "truth_name") == [["a", "b", "c"][i] for i in labels.tolist()]
        np.testing.assert_allclose(column(table, "loss"),
                                   F.cross_entropy(logits, labels, reduction="none").numpy(), rtol=1e-5)
        assert column(table, "correct") == (logits.argmax(1) == labels).tolist()


def test_image_layouts_and_denormalisation_decode_to_the_reference_pixels(make_pipeline):
    generator = torch.Generator().manual_seed(4)
    mean, std = [0.5, 0.25, 0.1], [0.2, 0.3, 0.4]
    normalised = torch.randn(4, 3, 5, 6, generator=generator)
    cases = [
        (normalised, {"mean": mean, "std": std}),
        (normalised.permute(0, 2, 3, 1), {"mean": mean, "std": std}),  # NHWC, inferred
        ((torch.rand(4, 5, 6, 4, generator=generator) * 255).to(torch.uint8), {}),  # RGBA uint8
        (torch.rand(4, 1, 5, 6, generator=generator) * 2 - 1, {"value_range": "-1_1"}),
    ]
    for images, options in cases:
        pipeline = make_pipeline("classification", options, num_samples=None)
        pipeline.submit(images, torch.zeros(4, dtype=torch.long), torch.randn(4, 3))
        expected = images_to_uint8_reference(images, **options).numpy()
        cells = column(finish(pipeline), "image")
        assert len(cells) == 4
        for i, cell in enumerate(cells):
            pixels = decode(cell.path)
            np.testing.assert_array_equal(pixels, expected[i] if expected.shape[-1] > 1 else expected[i, :, :, 0])
            assert pixels.std() > 0


class Watched(torch.Tensor):
    """A tensor that notes every torch call that touches it (a CUDA tensor read back would be a sync)."""

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        Watched.calls.append(getattr(func, "__name__", repr(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("extractor", ["classification", "segmentation"])
def test_mean_and_std_tensors_are_read_once_when_the_extractor_is_made(make_pipeline, extractor):
    mean, std = torch.tensor([0.5, 0.25, 0.1]).as_subclass(Watched), torch.tensor([0.2]).as_subclass(Watched)
    Watched.calls.clear()
    pipeline = make_pipeline(extractor, {"mean": mean, "std": std}, num_samples=None)
    assert Watched.calls  # read here, at construction
    Watched.calls.clear()
    mean.zero_()  # changed afterwards: the values given at construction stay in use
    Watched.calls.clear()
    images = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    targets = torch.zeros(2, dtype=torch.long) if extractor == "classification" else torch.zeros(2, 4, 5, dtype=torch.long)
    logits = torch.randn(2, 3) if extractor == "classification" else torch.randn(2, 3, 4, 5)
    for _ in range(3):
        pipeline.submit(images, targets, logits)
    cells = column(finish(pipeline), "image")
    assert Watched.calls == []  # neither a batch on the caller's thread nor the worker touched them again
    expected = images_to_uint8_reference(images, mean=[0.5, 0.25, 0.1], std=[0.2]).numpy()
    assert len(cells) == 6
    for i, cell in enumerate(cells):
        np.testing.assert_array_equal(decode(cell.path), expected[i % 2])


def test_top_k_column_names_the_k_best_classes(make_pipeline):
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [4.0, 0.0, 0.0, 5.0]])
    pipeline = make_pipeline("classification", {"class_names": ["w", "x", "y", "z"], "top_k": 2}, num_samples=None)
    pipeline.submit(torch.rand(2, 1, 3, 3), torch.tensor([1, 0]), logits)
    probs = logits.softmax(1)
    assert column(finish(pipeline), "top_k") == [f"x:{probs[0, 1]:.3f}, z:{probs[0, 3]:.3f}",
                                                 f"z:{probs[1, 3]:.3f}, w:{probs[1, 0]:.3f}"]


def test_segmentation_rows_leave_ignored_pixels_out_of_accuracy_and_loss(make_pipeline):
    generator = torch.Generator().manual_seed(9)
    images = torch.rand(3, 3, 4, 5, generator=generator)
    masks = torch.randint(0, 3, (3, 1, 4, 5), generator=generator)  # [N, 1, H, W] is accepted too
    masks[1, 0, :2] = 255  # ignore index
    masks[2, 0, 1:3, 1:4] = IGNORE  # another common one
    logits = torch.randn(3, 3, 4, 5, generator=generator)
    pipeline = make_pipeline("segmentation", {"class_names": ["sky", "road", "car"]}, num_samples=None)
    pipeline.submit(images, masks, logits)
    table = finish(pipeline)
    truth = masks[:, 0].long()
    valid = (truth >= 0) & (truth < 3)
    pixel_loss = F.cross_entropy(logits, truth.clamp(0, 2), reduction="none")
    expected_loss = (pixel_loss * valid).sum((1, 2)) / valid.sum((1, 2))
    expected_accuracy = ((logits.argmax(1) == truth) & valid).sum((1, 2)) / valid.sum((1, 2))
    np.testing.assert_allclose(column(table, "loss"), expected_loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(column(table, "pixel_accuracy"), expected_accuracy.numpy(), rtol=1e-6)
    for i, cell in enumerate(column(table, "image")):
        np.testing.assert_array_equal(cell.masks["prediction"].data, logits[i].argmax(0).numpy())
        # Ignored pixels keep their id (not class 0); -100 cannot be a uint8 mask id and shows as 255.
        np.testing.assert_array_equal(cell.masks["ground_truth"].data, truth[i].where(truth[i] >= 0, 255).numpy())
        assert cell.masks["prediction"].class_labels == {0: "sky", 1: "road", 2: "car"}


def test_classification_with_masked_classes_scores_as_plain_softmax_does(make_pipeline):
    inf = float("inf")
    logits = torch.tensor([[-inf, 2.0, 1.0, -inf], [-inf, -inf, 0.5, -inf], [1.0, float("nan"), -inf, 0.0],
                           [-inf, -inf, -inf, -inf]])
    pipeline = make_pipeline("classification", {"top_k": 2}, num_samples=None)
    pipeline.submit(torch.rand(4, 1, 3, 3), torch.tensor([1, 2, 0, 0]), logits)
    table = finish(pipeline)
    probs = logits[:2].softmax(1)
    assert column(table, "prediction") == [1, 2, -1, -1]
    assert column(table, "correct") == [True, True, False, False]
    assert column(table, "flag") == ["", "", "nonfinite", "nonfinite"]
    assert column(table, "confidence")[:2] == pytest.approx([float(probs[0, 1]), 1.0])
    assert column(table, "top_k")[:2] == [f"1:{probs[0, 1]:.3f}, 2:{probs[0, 2]:.3f}", "2:1.000, 0:0.000"]


def test_segmentation_flags_nan_and_plus_inf_logits_but_not_masked_classes(make_pipeline):
    logits = torch.randn(4, 3, 4, 5, generator=torch.Generator().manual_seed(3))
    logits[1, 2] = float("-inf")  # class 2 masked out everywhere in sample 1: valid
    logits[2, 0, 1, 1] = float("nan")
    logits[3, 1, 0, 0] = float("inf")
    pipeline = make_pipeline("segmentation", num_samples=None)
    pipeline.submit(torch.rand(4, 3, 4, 5), torch.randint(0, 2, (4, 4, 5)), logits)
    assert column(finish(pipeline), "flag") == ["", "", "nonfinite", "nonfinite"]


# -- bad input: refused on the caller's thread, at the first bad batch ------------------------------
def classification_batch(batch_size=4, channels=3):
    return (torch.rand(batch_size, channels, 6, 6), torch.randint(0, 3, (batch_size,)), torch.randn(batch_size, 3))


def segmentation_batch(batch_size=4):
    return (torch.rand(batch_size, 3, 6, 6), torch.randint(0, 3, (batch_size, 6, 6)), torch.randn(batch_size, 3, 6, 6))


def tokens_batch(batch_size=4):
    tokens = torch.randint(0, 10, (batch_size, 5))
    return tokens, tokens, torch.randn(batch_size, 5, 10)


def replace(batch, index, value):
    batch = list(batch)
    batch[index] = value
    return tuple(batch)


BAD_BATCHES = [
    # (extractor, options, good batch, bad batch, exception, message)
    ("classification", {}, classification_batch, lambda: replace(classification_batch(), 0, torch.rand(4, 108)),
     ValueError, r"inputs: expected a 4-D image batch .* got shape \(4, 108\)"),
    ("classification", {}, classification_batch, lambda: replace(classification_batch(), 0, torch.rand(4, 6, 6)),
     ValueError, r"inputs: expected a 4-D image batch"),
    ("classification", {}, classification_batch, lambda: replace(classification_batch(), 0, torch.rand(4, 1, 3, 6, 6)),
     ValueError, r"inputs: expected a 4-D image batch"),
    ("classification", {}, classification_batch, lambda: classification_batch(channels=2),
     ValueError, r"inputs: expected 1, 3 or 4 channels"),
    ("classification", {"channels_last": True}, lambda: replace(classification_batch(), 0, torch.rand(4, 6, 6, 3)),
     classification_batch, ValueError, r"channels_last: True means images are \[N,H,W,C\]"),
    ("classification", {"channels_last": False}, classification_batch,
     lambda: replace(classification_batch(), 0, torch.rand(4, 6, 6, 3)), ValueError, r"channels_last: False"),
    ("classification", {}, classification_batch, lambda: replace(classification_batch(), 2, torch.randn(5, 3)),
     ValueError, r"outputs: expected batch size 4"),
    ("classification", {}, classification_batch, lambda: replace(classification_batch(), 2, torch.randn(4, 3, 2)),
     ValueError, r"outputs: expected classification logits \[N, C\]"),
    ("classification", {}, classification_batch,
     lambda: replace(classification_batch(), 2, torch.randint(0, 3, (4, 3))), TypeError, r"outputs: .*floating"),
    ("classification", {}, classification_batch, lambda: replace(classification_batch(), 1, torch.zeros(3, dtype=int)),
     ValueError, r"targets: expected batch size 4"),
    ("classification", {}, classification_batch, lambda: replace(classification_batch(), 1, torch.rand(4)),
     ValueError, r"targets: expected class ids"),
    ("classification", {}, classification_batch, lambda: replace(classification_batch(), 1, torch.eye(4)),
     ValueError, r"targets: one-hot targets need 3 columns"),
    ("classification", {}, classification_batch,
     lambda: replace(classification_batch(), 0, torch.randint(0, 255, (4, 3, 6, 6), dtype=torch.int32)),
     TypeError, r"inputs: unsupported dtype torch.int32"),
    ("classification", {"mean": [0.5] * 3, "std": [0.2] * 3}, classification_batch,
     lambda: classification_batch(channels=1), ValueError, r"mean: expected 1 values \(one per channel\), got 3"),
    ("classification", {"std": [0.2] * 4}, lambda: classification_batch(channels=4), classification_batch,
     ValueError, r"std: expected 3 values \(one per channel\), got 4"),
    ("classification", {"mean": 0.5}, classification_batch,
     lambda: replace(classification_batch(), 0, torch.zeros(4, 3, 6, 6, dtype=torch.uint8)),
     ValueError, r"mean/std: de-normalisation is only supported for floating-point images"),
    ("classification", {"top_k": 4}, lambda: replace(classification_batch(), 2, torch.randn(4, 5)),
     classification_batch, ValueError, r"top_k: expected at most 3 \(the number of classes\), got 4"),
    ("segmentation", {}, segmentation_batch, lambda: replace(segmentation_batch(), 2, torch.randn(4, 3, 36)),
     ValueError, r"outputs: expected segmentation logits \[N, K, H, W\]"),
    ("segmentation", {}, segmentation_batch, lambda: replace(segmentation_batch(), 1, torch.rand(4, 6, 6)),
     ValueError, r"targets: expected integer class-id masks"),
    ("segmentation", {}, segmentation_batch, lambda: replace(segmentation_batch(), 1, torch.zeros(4, 6, 5, dtype=int)),
     ValueError, r"targets: mask size \(6, 5\) differs"),
    ("segmentation", {}, segmentation_batch, lambda: replace(segmentation_batch(), 2, torch.randn(2, 3, 6, 6)),
     ValueError, r"outputs: expected batch size 4"),
    ("tokens", {}, tokens_batch, lambda: replace(tokens_batch(), 2, torch.randn(4, 10)),
     ValueError, r"outputs: expected language-model logits \[N, T, V\]"),
    ("tokens", {}, tokens_batch, lambda: replace(tokens_batch(), 0, torch.rand(4, 5)),
     ValueError, r"inputs: expected integer token ids"),
    ("tokens", {}, tokens_batch, lambda: replace(tokens_batch(), 1, torch.zeros(4, 4, dtype=int)),
     ValueError, r"targets: expected 5 tokens"),
]


@pytest.mark.parametrize("extractor, options, good, bad, error, message", BAD_BATCHES,
                         ids=[f"{case[0]}-{case[5][:40]}" for case in BAD_BATCHES])
def test_bad_batch_raises_at_submit_and_earlier_rows_are_kept(make_pipeline, extractor, options, good, bad, error,
                                                              message):
    pipeline = make_pipeline(extractor, options, num_samples=None)
    good_batch = good()
    pipeline.submit(*good_batch)
    with pytest.raises(error, match=message):
        pipeline.submit(*bad())
    assert pipeline.stats.batches_submitted == 1
    pipeline.submit(*good_batch)  # the pipeline goes on
    table = finish(pipeline)
    assert column(table, "id") == list(range(8))
    assert pipeline.stats.errors == 0


@pytest.mark.parametrize("extractor, options, pipeline_options, error, message", [
    ("nope", {}, {}, UnknownPluginError, r"unknown extractor 'nope'; known extractors: .*classification.*segmentation"),
    ("classification", {}, {"policy": "best"}, ValueError, r"policy: expected one of 'first', 'reservoir', 'per_class'"),
    ("segmentation", {}, {"policy": "per_class"}, ValueError, r"policy: 'per_class' needs an extractor with one class"),
    ("tokens", {}, {"policy": "per_class"}, ValueError, r"policy: 'per_class' needs"),
    ("classification", {}, {"policy": "per_class"}, ValueError, r"num_classes: .*give class_names"),
    ("classification", {}, {"policy": "hardest", "hardest_by": "margin"}, ValueError, r"hardest_by: expected"),
    ("classification", {}, {"policy": "reservoir", "num_samples": None}, ValueError, r"num_samples: None"),
    ("classification", {}, {"num_samples": 0}, ValueError, r"num_samples: expected an int >= 1"),
    ("classification", {}, {"max_pending_batches": 0}, ValueError, r"max_pending_batches"),
    ("classification", {"top_k": 0}, {}, ValueError, r"top_k: expected an int >= 1"),
    ("classification", {"mean": "half"}, {}, TypeError, r"mean: expected a number or one number per channel"),
    ("segmentation", {"std": [0.1, 0.2]}, {}, ValueError, r"std: expected 1 value or one per channel"),
    ("classification", {"class_names": "abc"}, {}, TypeError, r"class_names"),
    ("classification", {"colour": "red"}, {}, TypeError, r"colour"),
    ("tokens", {"tokenizer": 42}, {}, TypeError, r"tokenizer: expected an object with decode"),
])
def test_bad_options_raise_when_the_pipeline_is_made(extractor, options, pipeline_options, error, message):
    with pytest.raises(error, match=message):
        pipeline_for(extractor, options, **pipeline_options)
