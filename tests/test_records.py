"""Records validate on the caller's thread, with messages that name the argument."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from logbus.files._naming import safe_filename, safe_relpath, wandb_artifact_name
from logbus.records import (
    REDACTED,
    Artifact,
    Box,
    Hyperparameters,
    Image,
    Images,
    Mask,
    Metrics,
    RunStarted,
    Table,
    as_float,
    redact_secrets,
)


def pixels(h=4, w=5, c=3):
    return np.arange(h * w * c, dtype=np.uint8).reshape(h, w, c)


BAD_INPUTS = [
    (lambda: Metrics({"loss": "high"}), TypeError, r"metrics\['loss'\]: expected a real number"),
    (lambda: Metrics({"loss": torch.ones(3)}), TypeError, r"metrics\['loss'\]"),
    (lambda: Metrics({"ok": True}), TypeError, r"metrics\['ok'\]"),
    (lambda: Metrics({1: 1.0}), TypeError, r"metrics: names must be str"),
    (lambda: Metrics([("a", 1.0)]), TypeError, r"metrics: expected a mapping"),
    (lambda: Metrics({"a": 1.0}, step=-1), TypeError, r"step: expected a non-negative int"),
    (lambda: Metrics({"a": 1.0}, step=1.5), TypeError, r"step: expected a non-negative int"),
    (lambda: Hyperparameters(["lr"]), TypeError, r"hyperparameters: expected a mapping"),
    (lambda: Table("t", ["a", "b"], [[1]]), ValueError, r"rows\[0\]: expected 2 cells"),
    (lambda: Table("t", "ab", [["a", "b"]]), TypeError, r"columns: expected a list of str"),
    (lambda: Table("t", ["a", "a"], []), ValueError, r"columns: names must be unique"),
    (lambda: Table("t", ["a"], [[object()]]), TypeError, r"rows\[0\]: cells must be"),
    (lambda: Table("t", ["a"], [[1]], join_key="id"), ValueError, r"join_key: expected one of the columns \['a'\]"),
    (lambda: Table("../escape", ["a"], [[1]]), ValueError, r"key: expected a relative key"),
    (lambda: Table("/abs", ["a"], [[1]]), ValueError, r"key: expected a relative key"),
    (lambda: Table("bad\nkey", ["a"], [[1]]), ValueError, r"key: control characters"),
    (lambda: Image(pixels=np.zeros((4, 4, 2), np.uint8)), ValueError, r"image: expected uint8 pixels of shape \[H, W, C\]"),
    (lambda: Image(pixels=np.zeros((2, 4, 4, 3), np.uint8)), ValueError, r"image: expected uint8 pixels"),
    (lambda: Image(pixels=np.zeros((4, 4, 3), np.float32)), TypeError, r"image: expected dtype uint8"),
    (lambda: Image(), ValueError, r"image: give exactly one of pixels"),
    (lambda: Image(path="/no/such/file.png"), ValueError, r"image.path: expected an existing"),
    (lambda: Image(pixels=pixels(), masks={"pred": Mask(np.zeros((3, 3), np.int64))}), ValueError,
     r"image.masks\['pred'\]: expected shape \(4, 5\)"),
    (lambda: Mask(np.zeros((3, 3), np.float32)), TypeError, r"mask: expected an integer array"),
    (lambda: Mask(np.full((3, 3), -1)), ValueError, r"mask: class ids must be >= 0"),
    (lambda: Box(5, 0, 1, 1, class_id=0), ValueError, r"box: expected min <= max"),
    (lambda: Box(0, 0, float("nan"), 1, class_id=0), TypeError, r"box.max_x"),
    (lambda: Images("imgs", [np.zeros((2, 2, 3))]), TypeError, r"images: expected a list of logbus.records.Image"),
    (lambda: RunStarted(""), TypeError, r"run_name: expected a non-empty str"),
]


@pytest.mark.parametrize("make, error, match", BAD_INPUTS)
def test_bad_input_names_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("name", ["../x.pt", "a/b.pt", "a\\b", "..", "x\x00y", "ok..pt"])
def test_artifact_names_with_paths_are_rejected(tmp_path, name):
    file = tmp_path / "f.pt"
    file.write_bytes(b"x")
    with pytest.raises((ValueError, TypeError), match="artifact name"):
        Artifact(path=str(file), name=name)


def test_metrics_copy_the_callers_dict_and_accept_tensors_and_numpy():
    values = {"loss": torch.tensor(0.25), "acc": np.float32(0.5), "n": 3}
    record = Metrics(values, step=np.int64(7))
    values["loss"] = "mutated later"
    assert record.step == 7 and isinstance(record.step, int)
    assert {k: as_float(v) for k, v in record.values.items()} == {"loss": 0.25, "acc": 0.5, "n": 3.0}


def test_secrets_are_redacted_in_hyperparameters_and_run_config(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    record = Hyperparameters({"lr": 0.1, "api_key": "abc", "db": {"password": "pw", "host": "h"},
                              "hf_token": "t", "notes": "k" * 40, "keys": ["k" * 40], "num_keys": 3})
    assert record.values == {"lr": 0.1, "api_key": REDACTED, "db": {"password": REDACTED, "host": "h"},
                             "hf_token": REDACTED, "notes": REDACTED, "keys": [REDACTED], "num_keys": 3}
    assert RunStarted("r", config={"secret": "x"}).config == {"secret": REDACTED}


def test_table_cells_normalise_numpy_scalars():
    record = Table("t", ["a", "img"], [[np.int64(3), Image(pixels=pixels())]])
    assert record.rows[0][0] == 3 and type(record.rows[0][0]) is int


def test_image_accepts_tensors_and_2d_grey():
    image = Image(pixels=torch.zeros(3, 4, dtype=torch.uint8))
    assert image.pixels.shape == (3, 4, 1)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_sanitised_names_never_escape(name):
    for cleaned in (safe_filename(name), *safe_relpath(name).split("/")):
        assert cleaned not in ("", ".", "..") and "/" not in cleaned and "\\" not in cleaned
        assert all(c.isalnum() and c.isascii() or c in "._-" for c in cleaned)
    assert ".." not in wandb_artifact_name(name) and "/" not in wandb_artifact_name(name)


# Any name with a visible character and nothing no backend can store (see test_names_no_backend_can_show...).
SHOWABLE_NAMES = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), min_size=1,
                         max_size=12).filter(str.strip)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(SHOWABLE_NAMES, st.one_of(st.floats(allow_nan=True), st.integers(-10**6, 10**6)), max_size=8))
def test_any_mapping_of_numbers_is_valid_metrics(values):
    record = Metrics(values, step=0)
    assert record.values == values


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=12))
def test_a_metric_name_is_refused_exactly_when_no_backend_can_show_or_store_it(name):
    """Empty, blank, invisible (only format characters), control characters, line separators, lone
    surrogates: refused naming the metric; any other name is kept as it is."""
    unshowable = not any(not c.isspace() and unicodedata.category(c) != "Cf" for c in name) or any(
        unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in name)
    if unshowable:
        with pytest.raises(ValueError, match=rf"^metrics\[{re.escape(repr(name))}\]: expected "):
            Metrics({name: 1.0}, step=0)
    else:
        assert Metrics({name: 1.0}, step=0).values == {name: 1.0}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 4))
def test_table_row_width_must_match(width, row_width):
    columns = [f"c{i}" for i in range(width)]
    rows = [[0] * row_width]
    if row_width == width:
        assert Table("t", columns, rows).rows == rows
    else:
        with pytest.raises(ValueError, match=r"rows\[0\]"):
            Table("t", columns, rows)


def test_redaction_leaves_non_secret_values_alone():
    values = {"monkey_count": 3, "keyboard": "qwerty", "max_tokens": 512, "token_limit": "8k", "num_keys": 2,
              "client_secret": "s", "OPENAI_API_KEY": "sk"}
    assert redact_secrets(values) == {**values, "client_secret": REDACTED, "OPENAI_API_KEY": REDACTED}


def test_a_float_image_is_refused_with_advice_that_runs_and_converts_it():
    """The error named ``logbus.to_uint8_images``, which does not exist; the advice it gives now is run
    here as written, and what it makes is accepted."""
    import logbus.kernels

    pixels = np.linspace(0, 1, 4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    with pytest.raises(TypeError, match=r"^image: expected dtype uint8, got float32 \(convert float images in 0\.\.1 with "
                                        r"(.+)\)$") as raised:
        Image(pixels=pixels)
    advice = re.search(r" with (.+)\)$", str(raised.value)).group(1)
    converted = eval(advice, {"logbus": logbus, "torch": torch, "pixels": pixels})  # noqa: S307 - our own message
    image = Image(pixels=converted)
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (4, 5, 3)
    assert image.pixels[0, 0, 0] == 0 and image.pixels[-1, -1, -1] == 255
