"""``logbus.options``: an option's declaration checks values with one message format, names the
option, tells the wrong type (``TypeError``) from a value out of range (``ValueError``), and renders
its row of the docs' configuration reference. (That the docs' tables are what the declarations render is in ``test_docs.py``;
the messages of every public constructor are in ``test_bad_input.py``.)"""

from __future__ import annotations

import math

import pytest

import logbus
from logbus.config_reference import update_page
from logbus.options import REQUIRED, Option, Options


@pytest.mark.parametrize("option, value, error, message", [
    (Option("workers", 2, "", kind="int", minimum=1), 0, ValueError, "workers: expected an int >= 1, got 0"),
    (Option("workers", 2, "", kind="int", minimum=1), True, TypeError, "workers: expected an int >= 1, got True"),
    (Option("workers", 2, "", kind="int", minimum=1), 2.0, TypeError, "workers: expected an int >= 1, got 2.0"),
    (Option("level", 1, "", kind="int", minimum=0, maximum=9), 10, ValueError, "level: expected an int 0..9, got 10"),
    (Option("cap", None, "", kind="int", minimum=1), "3", TypeError, "cap: expected an int >= 1 or None, got '3'"),
    (Option("wait", 1.0, "", kind="number", minimum=0, above=True, unit="seconds"), 0, ValueError,
     "wait: expected a number of seconds > 0 and <= 604800, got 0"),
    (Option("wait", 1.0, "", kind="number", minimum=0, unit="seconds"), math.nan, ValueError,
     "wait: expected a number of seconds 0..604800, got nan"),
    (Option("wait", 1.0, "", kind="number", minimum=0, unit="seconds"), math.inf, ValueError,
     "wait: expected a number of seconds 0..604800, got inf"),
    (Option("ratio", 1.0, "", kind="number", minimum=0), -math.inf, ValueError, "ratio: expected a finite number >= 0, got -inf"),
    (Option("ratio", 1.0, "", kind="number", minimum=0), math.inf, ValueError, "ratio: expected a finite number >= 0, got inf"),
    (Option("flag", True, "", kind="bool"), 1, TypeError, "flag: expected True or False, got 1"),
    (Option("layout", None, "", kind="bool"), "yes", TypeError, "layout: expected True, False or None, got 'yes'"),
    (Option("fmt", "png", "", kind="choice", choices=("png", "jpeg")), "gif", ValueError,
     "fmt: expected 'png' or 'jpeg', got 'gif'"),
    (Option("by", "a", "", kind="choice", choices=("a", "b", "c")), 3, TypeError, "by: expected one of 'a', 'b', 'c', got 3"),
    (Option("root", None, "", kind="path"), 3, TypeError, "root: expected a folder path or None, got 3"),
    (Option("n", 100, "", kind="int", minimum=1, allows_none=True), 0, ValueError, "n: expected an int >= 1 or None, got 0"),
])
def test_a_bad_value_is_named_with_what_was_expected(option, value, error, message):
    with pytest.raises(error) as raised:
        option.check(value)
    assert str(raised.value) == message


@pytest.mark.parametrize("option, value", [
    (Option("cap", None, "", kind="int", minimum=1), None),
    (Option("n", 100, "", kind="int", minimum=1, allows_none=True), None),
    (Option("level", 1, "", kind="int", minimum=0, maximum=9), 9),
    (Option("wait", 1.0, "", kind="number", minimum=0), 0),
    (Option("anything", None, ""), object()),  # kind None: the component checks it
])
def test_a_good_value_passes(option, value):
    assert option.check(value) is value


def test_a_table_gives_defaults_checks_by_name_and_renders_its_rows():
    options = Options(Option("name", REQUIRED, "the run"), Option("size", 256 * 2**20, "bytes", kind="int", minimum=1,
                                                                 shown="256 * 2**20"),
                      Option("backends", ("local",), "where"), Option("fmt", "png", "format"))
    assert options.defaults == {"size": 256 * 2**20, "backends": ("local",), "fmt": "png"}
    with pytest.raises(ValueError, match="size: expected an int >= 1, got 0"):
        options.check(size=0)
    assert options.markdown().splitlines()[2:] == [
        "| `name` | required | the run |", "| `size` | `256 * 2**20` | bytes |", '| `backends` | `("local",)` | where |',
        '| `fmt` | `"png"` | format |']
    with pytest.raises(ValueError, match="declared twice"):
        Options(Option("a", 1, ""), Option("a", 2, ""))


def test_update_page_rewrites_only_the_table_of_its_heading():
    text = "## Configuration reference\n\n### `thing`\n\nProse.\n\n| option | default | meaning |\n| --- | --- | --- |\n" \
           "| `old` | `1` | gone |\n\nMore prose.\n\n### Other\n\n| x |\n"
    updated = update_page(text, {"`thing`": Options(Option("new", 2, "here"))})
    assert updated == text.replace("| `old` | `1` | gone |", "| `new` | `2` | here |")
    # The last heading of its page (no heading after it) is found too.
    last = text[:text.index("### Other")]
    assert update_page(last, {"`thing`": Options(Option("new", 2, "here"))}) == updated[:updated.index("### Other")]


def test_a_wrong_type_is_a_type_error_and_still_the_value_error_it_used_to_be():
    option = Option("failure_limit", 3, "", kind="int", minimum=1)
    with pytest.raises(TypeError, match="failure_limit: expected an int >= 1, got True"):
        option.check(True)
    with pytest.raises(ValueError, match="failure_limit: expected an int >= 1, got True"):
        option.check(True)


# -- every declared option, audited ----------------------------------------------------------------
def _numeric_options():
    """(heading, option) for every int or number option of every table the configuration reference documents."""
    from logbus.config_reference import reference

    return [(heading, option) for heading, options in reference().items() for option in options.values()
            if option.kind in ("int", "number")]


NOT_A_VALUE = [math.inf, -math.inf, math.nan]


def test_no_numeric_option_takes_a_value_that_cannot_work():
    """``close_timeout=inf`` passed the check, then ``finish()`` raised OverflowError and no run folder was
    written. Every numeric option refuses infinities and NaN, and a seconds option anything past a week
    (``threading`` overflows far beyond that), naming the option."""
    walked = _numeric_options()
    assert {option.name for _, option in walked} >= {"close_timeout", "gather_timeout", "max_pending_bytes",
                                                     "pinned_pool_bytes", "compress_level", "top_k"}
    for heading, option in walked:
        bad = [*NOT_A_VALUE, True]
        if option.minimum is not None:
            bad.append(option.minimum - 1)
        if option.maximum is not None:
            bad.append(option.maximum + 1)
        if option.unit == "seconds":
            bad.append(1e300)
        for value in bad:
            with pytest.raises((TypeError, ValueError), match=rf"^{option.name}: expected ") as raised:
                option.check(value)
            assert (type(raised.value) is not ValueError) == (option.kind == "int" and isinstance(value, float)
                                                             or isinstance(value, bool)), (heading, option.name, value)


def _component(heading: str):
    """What a user constructs with the options under ``heading``."""
    from logbus.bus import create_backend, create_extractor
    from logbus.composer import LogBusLogger, SampleLogger

    if heading == "`logbus.start_run`":
        return lambda **options: logbus.start_run("options-walk", backends=[_Quiet()], **options)
    if heading == "`LogBusLogger`":
        return lambda **options: LogBusLogger(backends=[_Quiet()], **options)
    if heading in ("`SampleLogger`", "Sample pipeline options"):
        return SampleLogger
    kind, name = ("extractor", heading.split("`")[1]) if heading.endswith("extractor") else ("backend", heading.split("`")[1])
    return (lambda **options: create_extractor(name, **options)) if kind == "extractor" else (
        lambda **options: create_backend(name, **options))


class _Quiet:
    def log(self, record):
        pass

    def close(self, finish):
        pass


@pytest.mark.parametrize("value", NOT_A_VALUE + [10**30], ids=["inf", "-inf", "nan", "huge"])
def test_every_numeric_option_is_checked_by_its_component_at_the_call(logbus_dir, tmp_path, value):
    """Each component checks its declared options when it is made: a value that cannot work raises
    there, naming the option; a value that passes (a huge int is a budget without bound) makes an
    object that closes cleanly."""
    for heading, option in _numeric_options():
        make = _component(heading)
        refused = option.unit == "seconds" or not isinstance(value, int) or (
            option.maximum is not None and value > option.maximum)
        if refused:
            with pytest.raises((TypeError, ValueError), match=rf"^{option.name}: expected "):
                make(**{option.name: value})
            continue
        if option.name in ("rank", "world_size"):
            continue  # a rank of 10**30 needs a world of 10**30 + 1: both are only ints, checked together
        _dispose(make(**{option.name: value}))


def _dispose(made) -> None:
    """Closes what a component made started (a run's bus, a sample pipeline's worker)."""
    if isinstance(made, logbus.Run):
        made.finish()
    elif hasattr(made, "pipeline"):
        made.pipeline.close()
    elif hasattr(made, "bus"):
        made.bus.close()


def test_close_timeout_at_its_limit_still_closes_and_writes_the_run(logbus_dir):
    from logbus.options import MAX_WAIT_SECONDS

    with logbus.start_run("long-deadline", close_timeout=MAX_WAIT_SECONDS) as run:
        run.log({"loss": 1.0}, step=0)
    assert (logbus_dir / "long-deadline").is_dir()
    with pytest.raises(ValueError, match=r"^close_timeout: expected a number of seconds 0\.\.604800, got inf$"):
        logbus.start_run("infinite-deadline", close_timeout=math.inf)
    assert not (logbus_dir / "infinite-deadline").exists()


def test_rank_must_be_below_world_size():
    with pytest.raises(ValueError, match=r"^rank: expected 0\.\.1 \(below world_size 2\), got 2$"):
        logbus.start_run("ranks", backends=[_Quiet()], rank=2, world_size=2)


@pytest.mark.parametrize("make, message", [
    (lambda: logbus.start_run("typo", close_timout=1.0),
     "logbus.start_run: expected one of its options, got 'close_timout'; did you mean 'close_timeout'?"),
    (lambda: logbus.start_run("typo", backends=[("tensorboard", {"flush_intervall": 3})]),
     "backend 'tensorboard': expected one of its options, got 'flush_intervall'; did you mean 'flush_interval'?"),
    (lambda: __import__("logbus.composer", fromlist=["SampleLogger"]).SampleLogger(num_sample=8),
     "extractor 'classification': expected one of its options, got 'num_sample'; did you mean 'num_samples'?"),
    (lambda: __import__("logbus.composer", fromlist=["SampleLogger"]).SampleLogger(compress_levl=3),
     "extractor 'classification': expected one of its options, got 'compress_levl'; did you mean 'compress_level'?"),
    (lambda: __import__("logbus.composer", fromlist=["LogBusLogger"]).LogBusLogger(close_timout=1.0),
     "LogBusLogger: expected one of its options, got 'close_timout'; did you mean 'close_timeout'?"),
    (lambda: __import__("logbus.composer", fromlist=["WandBLogger"]).WandBLogger(projet="x"),
     "WandBLogger: expected one of its options, got 'projet'; did you mean 'project'?"),
    (lambda: logbus.Bus([_Quiet()], colour="red"),
     "Bus: expected one of its options, got 'colour' (its options: backends, close_timeout, failure_limit, "
     "max_pending_bytes)"),
])
def test_a_misspelt_option_names_the_closest_valid_one(logbus_dir, make, message):
    with pytest.raises(TypeError) as raised:
        make()
    assert str(raised.value) == message
