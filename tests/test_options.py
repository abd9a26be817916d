"""``logbus.options``: an option's declaration checks values with one message format, names the
option, tells the wrong type (``TypeError``) from a value out of range (``ValueError``), and renders
its README row. (That the README's tables are what the declarations render is in ``test_docs.py``;
the messages of every public constructor are in ``test_bad_input.py``.)"""

from __future__ import annotations

import math

import pytest

from logbus.config_reference import update_readme
from logbus.options import REQUIRED, Option, Options


@pytest.mark.parametrize("option, value, error, message", [
    (Option("workers", 2, "", kind="int", minimum=1), 0, ValueError, "workers: expected an int >= 1, got 0"),
    (Option("workers", 2, "", kind="int", minimum=1), True, TypeError, "workers: expected an int >= 1, got True"),
    (Option("workers", 2, "", kind="int", minimum=1), 2.0, TypeError, "workers: expected an int >= 1, got 2.0"),
    (Option("level", 1, "", kind="int", minimum=0, maximum=9), 10, ValueError, "level: expected an int 0..9, got 10"),
    (Option("cap", None, "", kind="int", minimum=1), "3", TypeError, "cap: expected an int >= 1 or None, got '3'"),
    (Option("wait", 1.0, "", kind="number", minimum=0, above=True, unit="seconds"), 0, ValueError,
     "wait: expected a number of seconds > 0, got 0"),
    (Option("wait", 1.0, "", kind="number", minimum=0, unit="seconds"), math.nan, ValueError,
     "wait: expected a number of seconds >= 0, got nan"),
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


def test_update_readme_rewrites_only_the_table_of_its_heading():
    text = "## Configuration reference\n\n### `thing`\n\nProse.\n\n| option | default | meaning |\n| --- | --- | --- |\n" \
           "| `old` | `1` | gone |\n\nMore prose.\n\n### Other\n\n| x |\n"
    updated = update_readme(text, {"`thing`": Options(Option("new", 2, "here"))})
    assert updated == text.replace("| `old` | `1` | gone |", "| `new` | `2` | here |")


def test_a_wrong_type_is_a_type_error_and_still_the_value_error_it_used_to_be():
    option = Option("failure_limit", 3, "", kind="int", minimum=1)
    with pytest.raises(TypeError, match="failure_limit: expected an int >= 1, got True"):
        option.check(True)
    with pytest.raises(ValueError, match="failure_limit: expected an int >= 1, got True"):
        option.check(True)
