"""Triton kernels vs torch references (CPU via TRITON_INTERPRET=1), and references vs plain torch."""

import os

import torch

# The interpreter is chosen when @triton.jit decorates, so this must precede the logbus.kernels import
# (tests/conftest.py sets it before any test module is imported; this line is for `--noconftest` runs).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logbus.kernels import (
    HAS_TRITON,
    images_to_uint8,
    images_to_uint8_reference,
    logits_summary,
    logits_summary_reference,
    segmentation_mask,
    segmentation_mask_reference,
)
from logbus.kernels import images as images_mod
from logbus.kernels import logits as logits_mod
from logbus.kernels import segmentation as segmentation_mod

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton reads TRITON_INTERPRET when it first decorates (its own tl.* helpers included), so the setdefault
# above is too late if something imported logbus.kernels earlier in this process.
_KERNELS = {images_mod: "_images_kernel", logits_mod: "_logits_kernel", segmentation_mod: "_mask_kernel"}
INTERPRETED = HAS_TRITON and all(
    type(getattr(module, name)).__name__ == "InterpretedFunction" for module, name in _KERNELS.items()
)


def _why_the_kernels_cannot_be_tested() -> str | None:
    if not HAS_TRITON:
        return "the Triton kernels cannot be tested: triton is not installed (torch brings it on Linux x86-64)"
    if DEVICE == "cpu" and not INTERPRETED:
        return ("the Triton kernels cannot be tested: no CUDA device, and they were compiled rather than "
                f"interpreted (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} when logbus.kernels was "
                "first imported); leave TRITON_INTERPRET unset (tests/conftest.py sets it) or set it to 1")
    return None


KERNELS_UNTESTABLE = _why_the_kernels_cannot_be_tested()
# A mark, not a skipif: a run that cannot test the kernels fails each kernel test with the reason (the
# fixture below), instead of passing with them quietly skipped.
needs_triton = pytest.mark.needs_triton


@pytest.fixture(autouse=True)
def _kernel_tests_fail_where_the_kernels_cannot_run(request):
    if KERNELS_UNTESTABLE and request.node.get_closest_marker("needs_triton"):
        pytest.fail(KERNELS_UNTESTABLE, pytrace=False)
# The interpreter runs kernels through numpy: NaN/inf arithmetic (on purpose here) warns, and so does
# its own numpy usage.
pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:triton.*"),
]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "permuted", "step_first", "step_last"]


def relayout(x: torch.Tensor, how: str) -> torch.Tensor:
    """Same values as `x`, but stored with the requested (mostly non-contiguous) strides."""
    if how == "contiguous":
        return x.contiguous()
    if how == "permuted":  # storage order reversed: every dim strided
        order = list(reversed(range(x.dim())))
        return x.permute(order).contiguous().permute(order)
    if how == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    dim = 0 if how == "step_first" else x.dim() - 1
    shape = list(x.shape)
    shape[dim] *= 2
    big = torch.full(shape, 7, dtype=x.dtype, device=x.device)  # junk in the skipped slots
    index = [slice(None)] * x.dim()
    index[dim] = slice(None, None, 2)
    view = big[tuple(index)]
    view.copy_(x)
    return view


def assert_summary_close(a, b):
    torch.testing.assert_close(a.prediction, b.prediction, rtol=0, atol=0)
    torch.testing.assert_close(a.finite, b.finite, rtol=0, atol=0)
    torch.testing.assert_close(a.topk_indices, b.topk_indices, rtol=0, atol=0)
    torch.testing.assert_close(a.confidence, b.confidence, rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(a.topk_probs, b.topk_probs, rtol=1e-5, atol=1e-6, equal_nan=True)


# ---------------------------------------------------------------------------------------------- images


def _random_images(gen, shape, value_range):
    """Values mostly inside the range, some outside, some exactly on rounding boundaries, some NaN/inf."""
    unit = torch.rand(shape, generator=gen) * 1.4 - 0.2
    flat = unit.view(-1)
    pick = torch.randint(0, flat.numel(), (max(1, flat.numel() // 8),), generator=gen)
    flat[pick] = (torch.randint(0, 255, pick.shape, generator=gen) + 0.5) / 255  # half-way cases
    if flat.numel() > 4:
        flat[:3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    if value_range == "-1_1":
        return unit * 2 - 1
    if value_range == "0_255":
        return unit * 255
    return unit


@needs_triton
@FAST
@given(
    n=st.integers(0, 4),  # 0 = a 3-D input
    h=st.integers(1, 17),
    w=st.integers(1, 17),
    c=st.sampled_from([1, 3, 4]),
    dtype=st.sampled_from([*FLOAT_DTYPES, torch.uint8]),
    value_range=st.sampled_from(["auto", "0_1", "-1_1", "0_255"]),
    normalise=st.booleans(),
    channels_last=st.booleans(),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**31 - 1),
)
def test_images_kernel_matches_reference(n, h, w, c, dtype, value_range, normalise, channels_last, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (h, w, c) if channels_last else (c, h, w)
    if n:
        shape = (n, *shape)
    kwargs = {"channels_last": channels_last}
    if dtype == torch.uint8:
        x = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    else:
        x = _random_images(gen, shape, value_range)
        kwargs["value_range"] = value_range
        if normalise:
            kwargs["mean"] = torch.rand(c, generator=gen).tolist()
            kwargs["std"] = (torch.rand(c, generator=gen) + 0.1).tolist()
            x = (x - 0.45) / 0.25
        x = x.to(dtype)
    x = relayout(x.to(DEVICE), layout)

    got = images_to_uint8(x, impl="triton", **kwargs)
    want = images_to_uint8_reference(x, **kwargs)
    assert got.dtype == torch.uint8 and got.is_contiguous() and got.device == x.device
    assert got.shape == (max(n, 1), h, w, c)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize(
    "value_range, to_input",
    [
        ("0_1", lambda lv: lv / 255),
        ("-1_1", lambda lv: lv / 255 * 2 - 1),
        ("0_255", lambda lv: lv),
    ],
)
def test_images_exact_levels_round_trip(impl, value_range, to_input):
    levels = torch.arange(256, dtype=torch.float64)
    # Each level, nudged by +-0.4 of a step, must round back to itself.
    lv = torch.stack([levels - 0.4, levels, levels + 0.4]).clamp(0, 255)
    x = to_input(lv).float().view(1, 3, 16, 16).to(DEVICE)
    out = images_to_uint8(x, value_range=value_range, impl=impl)
    want = lv.round().to(torch.uint8).view(1, 3, 16, 16).permute(0, 2, 3, 1)
    torch.testing.assert_close(out.cpu(), want, rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_images_special_values_and_half_up(impl):
    x = torch.tensor([float("nan"), float("inf"), float("-inf"), -3.0, 3.0, 0.5 / 255, 1.5 / 255, 0.5])
    out = images_to_uint8(x.view(1, 1, 2, 4).to(DEVICE), impl=impl)
    # NaN -> 0, clamping, and half-way values round up (torch.round would give 0 and 2 for 0.5, 1.5).
    assert out.flatten().tolist() == [0, 255, 0, 0, 255, 1, 2, 128]


def test_images_reference_matches_eager_chain():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    eager = ((x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).clamp(0, 1).mul(255).round().to(torch.uint8)).permute(0, 2, 3, 1)
    ours = images_to_uint8_reference(x, mean=mean, std=std)
    diff = (ours.int() - eager.int()).abs()
    # Only exact .5 ties may differ (half-up vs half-to-even); random data essentially never hits them.
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


def test_images_layouts_and_channel_placement():
    x = torch.zeros(2, 3, 5, 6)
    x[:, 1] = 1.0
    out = images_to_uint8_reference(x)
    assert out.shape == (2, 5, 6, 3)
    assert out[..., 1].eq(255).all() and out[..., 0].eq(0).all() and out[..., 2].eq(0).all()
    assert torch.equal(images_to_uint8_reference(x.permute(0, 2, 3, 1)), out)  # NHWC input inferred
    assert torch.equal(images_to_uint8_reference(x[0]), out[:1])  # 3-D -> N=1


def test_images_channels_last_flag_overrides_inference():
    x = torch.rand(2, 3, 5, 3)  # dim 1 and last dim both look like channels
    assert images_to_uint8_reference(x).shape == (2, 5, 3, 3)  # inferred NCHW
    assert images_to_uint8_reference(x, channels_last=True).shape == (2, 3, 5, 3)
    assert images_to_uint8_reference(x, channels_last=False).shape == (2, 5, 3, 3)


def test_images_uint8_passthrough_and_scalar_mean_std():
    x = torch.randint(0, 256, (2, 6, 7, 4), dtype=torch.uint8)
    assert torch.equal(images_to_uint8_reference(x), x)
    y = torch.full((1, 3, 2, 2), -1.0)
    # std/mean given as one value broadcast to every channel: -1 * 0.5 + 0.5 = 0 -> 0.
    assert images_to_uint8_reference(y, mean=0.5, std=[0.5]).eq(0).all()
    assert images_to_uint8_reference(y, mean=[1.0, 1.0, 1.0]).eq(0).all()  # std defaults to 1
    assert images_to_uint8_reference(y + 2, mean=[0.0, 0.0, 0.0]).eq(255).all()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"images": torch.rand(5)}, ValueError, r"images: expected a 3-D .* got shape \(5,\)"),
        ({"images": torch.rand(1, 1, 3, 4, 4)}, ValueError, r"images: expected .*got shape \(1, 1, 3, 4, 4\)"),
        ({"images": torch.rand(2, 2, 5, 5)}, ValueError, r"images: expected 1, 3 or 4 channels"),
        ({"images": torch.rand(2, 3, 5, 5), "channels_last": True}, ValueError, r"channels_last: True"),
        ({"images": torch.rand(2, 5, 5, 3), "channels_last": False}, ValueError, r"channels_last: False"),
        ({"images": torch.rand(3, 4, 4), "mean": [0.1, 0.2]}, ValueError,
         r"mean: expected 3 values \(one per channel\), got 2"),
        ({"images": torch.rand(3, 4, 4), "std": [1.0] * 4}, ValueError, r"std: expected 3 values"),
        ({"images": torch.zeros(3, 4, 4, dtype=torch.int32)}, TypeError, r"images: unsupported dtype"),
        ({"images": [[1.0]]}, TypeError, r"images: expected a torch.Tensor"),
        ({"images": torch.rand(3, 4, 4), "value_range": "0_10"}, ValueError, r"value_range"),
        ({"images": torch.rand(3, 4, 4), "value_range": "uint8"}, ValueError, r"value_range"),
        ({"images": torch.zeros(3, 4, 4, dtype=torch.uint8), "value_range": "0_1"}, ValueError, r"value_range"),
        ({"images": torch.zeros(3, 4, 4, dtype=torch.uint8), "mean": [0.5]}, ValueError, r"mean/std"),
        ({"images": torch.rand(3, 4, 4), "impl": "cuda"}, ValueError, r"impl"),
    ],
)  # fmt: skip
def test_images_errors(kwargs, exc, match):
    kwargs = {**kwargs}  # parametrize shares the dict between runs: never mutate it
    images = kwargs.pop("images")
    with pytest.raises(exc, match=match):
        images_to_uint8(images, **kwargs)


# ---------------------------------------------------------------------------------------------- logits


def _random_logits(gen, shape, dtype, specials, masked=False):
    x = torch.randn(shape, generator=gen) * 3
    rows = x.view(-1, shape[-1])
    if shape[-1] > 1 and rows.shape[0] > 0:
        # A duplicated maximum later in the row: argmax must keep the first one.
        r = int(torch.randint(0, rows.shape[0], (1,), generator=gen))
        j = int(torch.argmax(rows[r]))
        rows[r, -1] = rows[r, j]
    if masked:  # masked / padded vocabularies: -inf is valid input with probability 0
        rows[torch.rand(rows.shape, generator=gen) < 0.5] = float("-inf")
        keep = int(torch.randint(0, shape[-1], (1,), generator=gen))
        rows[0] = float("-inf")
        rows[0, keep] = -2.0  # a row of -inf but one entry: that one has probability 1
        if rows.shape[0] > 1:
            rows[-1] = float("-inf")  # nothing above -inf: no softmax exists
    if specials and rows.shape[0] > 1:
        r = torch.randint(0, rows.shape[0], (3,), generator=gen)
        c = torch.randint(0, shape[-1], (3,), generator=gen)
        rows[r, c] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    return x.to(dtype)


@needs_triton
@FAST
@given(
    n=st.integers(1, 5),
    t=st.integers(0, 4),  # 0 = a 2-D [N, C] input
    v=st.one_of(st.integers(1, 40), st.integers(41, 3000)),
    dtype=st.sampled_from(FLOAT_DTYPES),
    layout=st.sampled_from(LAYOUTS),
    k=st.integers(1, 5),
    specials=st.booleans(),
    masked=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_logits_kernel_matches_reference(n, t, v, dtype, layout, k, specials, masked, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, t, v) if t else (n, v)
    x = relayout(_random_logits(gen, shape, dtype, specials, masked).to(DEVICE), layout)
    k = min(k, v)
    got = logits_summary(x, k=k, impl="triton")
    want = logits_summary_reference(x, k=k)
    assert got.prediction.shape == shape[:-1] and got.topk_indices.shape == (*shape[:-1], k)
    assert got.prediction.dtype == torch.int64 and got.confidence.dtype == torch.float32
    assert got.finite.dtype == torch.bool and got.topk_probs.dtype == torch.float32
    assert_summary_close(got, want)


@needs_triton
def test_logits_kernel_256k_vocab():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 256_000, generator=gen)
    block = logits_mod._BLOCK_V
    x[0, 0, 255_999] = 50.0  # maximum in the last block
    x[1, 0, 70_001] = x[1, 0, 250_000] = 40.0  # tie across blocks and lanes -> the lower index
    x[2, 0, 7 + 3 * block] = x[2, 0, 7 + 9 * block] = 40.0  # tie within one lane of the kernel
    x[3, 0, 200_000] = float("-inf")  # late -inf: the lane already holds finite values
    x[4, 0, :] = float("-inf")  # a masked vocabulary: 3 entries left, in different blocks and lanes
    x[4, 0, [5, 5 + 2 * block + 1, 199_999]] = torch.tensor([1.0, 3.0, 2.0])
    x[5, 0, 3] = float("inf")  # early +inf: the row has no softmax
    x = x.to(DEVICE)
    got = logits_summary(x, k=3, impl="triton")
    want = logits_summary_reference(x, k=3)
    row_3 = int(x[3, 0].argmax())
    assert got.prediction.flatten().tolist() == [255_999, 70_001, 7 + 3 * block, row_3, 5 + 2 * block + 1, -1]
    assert got.finite.flatten().tolist() == [True, True, True, True, True, False]
    assert got.topk_indices[4, 0].tolist() == [5 + 2 * block + 1, 199_999, 5]
    torch.testing.assert_close(got.topk_probs[4, 0].cpu(), torch.tensor([1.0, 3.0, 2.0])[[1, 2, 0]].softmax(0))
    assert got.topk_indices[1, 0, :2].tolist() == [70_001, 250_000]
    assert_summary_close(got, want)


@FAST
@given(
    shape=st.sampled_from([(3, 7), (2, 5, 11), (4, 1000), (1, 3, 257)]),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
@pytest.mark.parametrize("masked", [False, True])
def test_logits_reference_matches_softmax(shape, k, seed, masked):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 4
    if masked:  # -inf entries (a masked vocabulary), at least k of them left finite
        x[..., k:][torch.rand(x[..., k:].shape, generator=gen) < 0.5] = float("-inf")
    got = logits_summary_reference(x, k=k)
    probs = x.float().softmax(-1)
    conf, pred = probs.max(-1)
    top_p, top_i = probs.topk(k, -1)
    torch.testing.assert_close(got.prediction, torch.argmax(x, -1), rtol=0, atol=0)
    torch.testing.assert_close(got.prediction, pred, rtol=0, atol=0)
    torch.testing.assert_close(got.confidence, conf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.topk_indices, top_i, rtol=0, atol=0)  # no ties in random fp32
    torch.testing.assert_close(got.topk_probs, top_p, rtol=1e-5, atol=1e-6)
    assert got.finite.all()


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_logits_nan_and_plus_inf_mark_the_row_and_minus_inf_is_probability_zero(impl):
    inf, nan = float("inf"), float("nan")
    x = torch.randn(7, 6)
    x[1, 2] = nan
    x[2, 0] = inf
    x[3, [0, 5]] = -inf  # a masked vocabulary: valid, the other four share the probability
    x[4] = torch.tensor([-inf, -inf, -inf, 0.5, -inf, -inf])  # all masked but one: probability 1
    x[5] = -inf  # nothing left: no softmax exists
    x[6, [1, 3]] = torch.tensor([-inf, nan])  # a NaN still marks a row that also holds -inf
    got = logits_summary(x.to(DEVICE), k=3, impl=impl)
    assert got.finite.tolist() == [True, False, False, True, True, False, False]
    for row in (0, 3, 4):  # what plain softmax gives, -inf entries at probability 0
        probs = x[row].softmax(-1)
        top_p, top_i = probs.topk(3)
        assert got.prediction[row] == int(x[row].argmax())
        torch.testing.assert_close(got.confidence[row].cpu(), probs.max())
        torch.testing.assert_close(got.topk_probs[row].cpu(), top_p)
        if row != 4:  # row 4 ties its five zeros: covered by the stable-order test below
            assert got.topk_indices[row].tolist() == top_i.tolist()
    assert got.prediction[4] == 3 and got.confidence[4] == 1.0
    assert got.topk_indices[4].tolist() == [3, 0, 1] and got.topk_probs[4].tolist() == [1.0, 0.0, 0.0]
    assert got.prediction[[1, 2, 5, 6]].tolist() == [-1] * 4 and got.confidence[[1, 2, 5, 6]].isnan().all()
    assert (got.topk_indices[[1, 2, 5, 6]] == -1).all() and got.topk_probs[[1, 2, 5, 6]].isnan().all()


@FAST
@given(
    shape=st.sampled_from([(6, 5), (3, 4, 9), (2, 300)]),
    k=st.integers(1, 5),
    levels=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_logits_topk_ties_match_stable_sort(shape, k, levels, seed):
    # Few distinct values: ties everywhere, also across the k-th place.
    x = torch.randint(0, levels, shape, generator=torch.Generator().manual_seed(seed)).float()
    want = torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]
    got = logits_summary_reference(x, k=k)
    torch.testing.assert_close(got.topk_indices, want, rtol=0, atol=0)
    torch.testing.assert_close(got.prediction, want[..., 0], rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_logits_ties_take_lowest_index(impl):
    x = torch.tensor([[1.0, 5.0, 5.0, 2.0, 5.0], [0.0, 0.0, 0.0, 0.0, 0.0]], device=DEVICE)
    got = logits_summary(x, k=3, impl=impl)
    assert got.prediction.tolist() == [1, 0]
    assert got.topk_indices.tolist() == [[1, 2, 4], [0, 1, 2]]
    torch.testing.assert_close(got.confidence.cpu(), torch.tensor([x[0].softmax(0).max().item(), 0.2]))


@pytest.mark.parametrize(
    "logits, k, exc, match",
    [
        (torch.rand(5), 1, ValueError, r"logits: expected a 2-D .*got shape \(5,\)"),
        (torch.rand(2, 3, 4, 5), 1, ValueError, r"logits: expected a 2-D .*got shape \(2, 3, 4, 5\)"),
        (torch.zeros(2, 3, dtype=torch.int64), 1, TypeError, r"logits: expected a floating dtype"),
        (torch.rand(2, 3), 0, ValueError, r"k: expected 1 <= k <= 3"),
        (torch.rand(2, 3), 4, ValueError, r"k: expected 1 <= k <= 3 .* got 4"),
        (torch.rand(2, 3), 1.0, TypeError, r"k: expected an int"),
        ("logits", 1, TypeError, r"logits: expected a torch.Tensor"),
    ],
)
def test_logits_errors(logits, k, exc, match):
    with pytest.raises(exc, match=match):
        logits_summary(logits, k=k)


# ---------------------------------------------------------------------------------------- segmentation


@needs_triton
@FAST
@given(
    n=st.integers(0, 3),  # 0 = a 3-D input
    c=st.sampled_from([1, 2, 3, 7, 20, 256]),
    h=st.integers(1, 17),
    w=st.integers(1, 17),
    dtype=st.sampled_from(FLOAT_DTYPES),
    layout=st.sampled_from([*LAYOUTS, "channels_last"]),
    ties=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_segmentation_kernel_matches_reference(n, c, h, w, dtype, layout, ties, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (max(n, 1), c, h, w)
    # Few distinct levels make ties common; a few NaN/inf pixels exercise the special cases.
    x = torch.randint(0, 3, shape, generator=gen).float() if ties else torch.randn(shape, generator=gen)
    if x.numel() > 8:
        x.view(-1)[torch.randint(0, x.numel(), (3,), generator=gen)] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    x = x.to(dtype)
    if n == 0:
        x = x[0]
        layout = "contiguous" if layout == "channels_last" else layout
    x = relayout(x.to(DEVICE), layout)
    got = segmentation_mask(x, impl="triton")
    want = segmentation_mask_reference(x)
    assert got.shape == (max(n, 1), h, w)
    assert got.dtype == (torch.uint8 if c <= 255 else torch.int16)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_segmentation_reference_matches_argmax():
    x = torch.randn(2, 9, 6, 5, generator=torch.Generator().manual_seed(3))
    x[:, 4] = x[:, 2]  # exact ties between classes 2 and 4
    want = torch.argmax(x, dim=1)
    assert torch.equal(segmentation_mask_reference(x).long(), want)
    assert torch.equal(segmentation_mask_reference(x.to(memory_format=torch.channels_last)).long(), want)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_segmentation_dtype_nan_and_class_255(impl):
    x = torch.zeros(1, 256, 2, 2)
    x[0, 255, 0, 0] = 1.0
    x[0, 7, 0, 1] = 1.0
    x[0, 9, 1, 0] = float("nan")
    x[0, 12, 1, 0] = 5.0
    got = segmentation_mask(x.to(DEVICE), impl=impl)
    assert got.dtype == torch.int16
    assert got.cpu().tolist() == [[[255, 7], [0, 0]]]  # NaN pixel -> 0 despite class 12 being larger
    small = segmentation_mask(x[:, :255].to(DEVICE), impl=impl)
    assert small.dtype == torch.uint8 and small.cpu().tolist() == [[[0, 7], [0, 0]]]


@pytest.mark.parametrize(
    "logits, exc, match",
    [
        (torch.rand(4, 4), ValueError, r"logits: expected a 3-D \[C, H, W\] .*got shape \(4, 4\)"),
        (torch.rand(1, 2, 3, 4, 5), ValueError, r"logits: expected a 3-D .*got shape \(1, 2, 3, 4, 5\)"),
        (torch.zeros(2, 3, 3, dtype=torch.int32), TypeError, r"logits: expected a floating dtype"),
        (torch.rand(1, 0, 3, 3), ValueError, r"logits: expected at least one class"),
        (None, TypeError, r"logits: expected a torch.Tensor"),
    ],
)
def test_segmentation_errors(logits, exc, match):
    with pytest.raises(exc, match=match):
        segmentation_mask(logits)


# -------------------------------------------------------------------------------------------- dispatch


def test_auto_uses_reference_on_cpu(monkeypatch):
    def boom(*args):
        raise AssertionError("the Triton path must not run for CPU tensors with impl='auto'")

    monkeypatch.setattr(images_mod, "_images_triton", boom)
    monkeypatch.setattr(logits_mod, "_summary_triton", boom)
    monkeypatch.setattr(segmentation_mod, "_mask_triton", boom)
    images_to_uint8(torch.rand(3, 4, 4))
    logits_summary(torch.rand(2, 5))
    segmentation_mask(torch.rand(3, 4, 4))
    if HAS_TRITON and (DEVICE == "cuda" or INTERPRETED):  # proves the patch is effective
        with pytest.raises(AssertionError):
            images_to_uint8(torch.rand(3, 4, 4, device=DEVICE), impl="triton")


@pytest.mark.parametrize(
    "call",
    [
        lambda: images_to_uint8(torch.rand(3, 2, 2), impl="fast"),
        lambda: logits_summary(torch.rand(2, 3), impl="fast"),
        lambda: segmentation_mask(torch.rand(3, 2, 2), impl="fast"),
    ],
)
def test_unknown_impl_rejected(call):
    with pytest.raises(ValueError, match=r"impl: expected one of"):
        call()


def test_package_imports_and_works_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, logbus.kernels as K\n"
        "assert not K.HAS_TRITON\n"
        "assert K.images_to_uint8(torch.ones(3, 2, 2)).eq(255).all()\n"
        "assert K.logits_summary(torch.tensor([[0.0, 1.0]])).prediction.tolist() == [1]\n"
        "assert K.segmentation_mask(torch.rand(2, 2, 2)).shape == (1, 2, 2)\n"
        "try:\n"
        "    K.images_to_uint8(torch.ones(3, 2, 2), impl='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'triton is not installed' in str(e)\n"
        "else:\n"
        "    raise SystemExit('impl=triton without triton must fail')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_images_validation_runs_on_meta_tensors():
    # logbus.samples._extractor validates image arguments on the training thread with `_prepare` on a meta tensor
    # (no data, no device sync): keep that working.
    x, _mode, mean, std = images_mod._prepare(torch.empty(2, 5, 6, 3, device="meta"), [0.5], None, "auto", None)
    assert x.shape == (2, 3, 5, 6) and mean == (0.5, 0.5, 0.5) and std == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"mean: expected 3 values"):
        images_mod._prepare(torch.empty(2, 3, 4, 4, device="meta"), [0.1, 0.2], None, "auto", None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    # The sample pipeline runs these on a side stream; a host sync would stall the training thread.
    x_img, x_lm = torch.rand(2, 3, 8, 8, device="cuda"), torch.randn(2, 3, 50, device="cuda")
    calls = [
        lambda: images_to_uint8(x_img, mean=[0.5] * 3, std=[0.2] * 3),
        lambda: logits_summary(x_lm, k=3),
        lambda: segmentation_mask(torch.randn(2, 5, 8, 8, device="cuda")),
    ]
    for call in calls:
        call()  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for call in calls:
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
