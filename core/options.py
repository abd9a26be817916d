"""Public options, each declared once: name, default, what values it takes, and what it means.

A component's options are one ``Options`` table next to the component. The same declaration gives
the constructor's defaults (``OPTIONS.defaults["x"]`` in the signature), checks a caller's values on the
caller's thread with one message format (``"<name>: expected <what>, got <value>"``; ``TypeError`` for
the wrong type, ``ValueError`` for a value out of range), and renders the docs' "Configuration
reference" tables (``logbus.config_reference``). Options whose check needs more than
a type and a range (``backends``, ``class_names``, ``tokenizer``...) declare ``kind=None`` and stay
checked by their component; they are still documented and defaulted from here.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, TypeVar


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of an option that has none

# The longest wait a ``seconds`` option takes: a week. Every wait is a deadline on ``time.monotonic()``
# handed to ``threading`` (``Event.wait``, ``Thread.join``), which raises ``OverflowError`` past
# ``threading.TIMEOUT_MAX`` (about 292 years here, less on some platforms); a bound far inside it, and
# far beyond any sane deadline, keeps a value such as ``1e300`` from passing the check and failing at
# the end of training.
MAX_WAIT_SECONDS = 7 * 24 * 3600

Kind = Literal["int", "number", "bool", "str", "path", "choice", "dict", None]
_KINDS = ("int", "number", "bool", "str", "path", "choice", "dict", None)


class OptionTypeError(TypeError, ValueError):
    """An option of the wrong type. A ``TypeError``, and a ``ValueError`` too: before options were
    declared in one place, some checks raised ``ValueError`` for a wrong type (``failure_limit=True``),
    and code that catches that keeps working (as numpy's ``AxisError`` is both ``ValueError`` and
    ``IndexError``)."""

@dataclass(frozen=True)
class Option:
    """One public option.

    :param name: the keyword, as in the signature.
    :param default: the default (``REQUIRED`` for none). ``None`` as default also allows ``None``.
    :param allows_none: ``None`` is allowed though it is not the default (``num_samples``: every sample).
    :param doc: one line for the reference table: what it means (markdown).
    :param kind: ``int``, ``number`` (int or float), ``bool``, ``str``, ``path`` (str or
        ``os.PathLike``), ``choice`` (one of ``choices``), ``dict``; ``None``: checked by the component.
    :param minimum: the smallest value allowed (``int``, ``number``).
    :param maximum: the largest value allowed (``int``, ``number``). A ``number`` is always finite (never
        ``inf`` or NaN); one with ``unit="seconds"`` is at most :data:`MAX_WAIT_SECONDS` unless this says less.
    :param above: ``minimum`` itself is not allowed (``> 0`` rather than ``>= 0``).
    :param choices: the values a ``choice`` takes.
    :param unit: what a number counts, said in the error (``seconds``).
    :param shown: the default as the reference writes it, where ``repr`` is not how one would
        (``256 * 2**20``); it must evaluate to ``default``.
    """

    name: str
    default: Any
    doc: str
    kind: Kind = None
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    choices: tuple = ()
    unit: str = ""
    shown: str | None = None
    allows_none: bool = False

    def __post_init__(self):
        if self.kind == "number" and self.unit == "seconds" and self.maximum is None:
            object.__setattr__(self, "maximum", MAX_WAIT_SECONDS)
        if self.kind not in _KINDS:
            raise ValueError(f"kind: expected one of {_KINDS}, got {self.kind!r}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"choices: expected choices exactly for kind 'choice' ({self.name})")

    @property
    def nullable(self) -> bool:
        return self.allows_none or self.default is None

    def expected(self) -> str:
        """What the option takes, as the error message says it."""
        number = "a number" if self.maximum is not None else "a finite number"  # a range says it otherwise
        what = {"int": "an int", "number": f"{number} of {self.unit}" if self.unit else number,
                "bool": "True or False", "str": "a str", "path": "a folder path", "dict": "a dict",
                "choice": _one_of(self.choices), None: "a valid value"}[self.kind]
        if self.kind in ("int", "number"):
            if self.minimum is not None and self.maximum is not None:
                what += f" > {self.minimum} and <= {self.maximum}" if self.above else f" {self.minimum}..{self.maximum}"
            elif self.minimum is not None:
                what += f" {'>' if self.above else '>='} {self.minimum}"
            elif self.maximum is not None:
                what += f" <= {self.maximum}"
        if self.nullable:
            what = what.replace(" or ", ", ") + " or None" if self.kind == "bool" else what + " or None"
        return what

    def check(self, value: Any) -> Any:
        """``value`` if this option takes it; else ``TypeError`` (wrong type) or ``ValueError`` (out of
        range), both naming the option and what it expects."""
        kind = self.kind
        if kind is None or (value is None and self.nullable):
            return value
        if not self._right_type(kind, value):
            raise OptionTypeError(f"{self.name}: expected {self.expected()}, got {value!r:.80}")
        if self.kind == "choice" and value not in self.choices:
            raise ValueError(f"{self.name}: expected {self.expected()}, got {value!r:.80}")
        if self.kind in ("int", "number") and not self._in_range(value):
            raise ValueError(f"{self.name}: expected {self.expected()}, got {value!r:.80}")
        return value

    @staticmethod
    def _right_type(kind: str, value: Any) -> bool:
        import os

        if kind == "bool":
            return isinstance(value, bool)
        if isinstance(value, bool):  # True is an int to Python, never a count or a size here
            return False
        return {"int": lambda: isinstance(value, int), "number": lambda: isinstance(value, (int, float)),
                "str": lambda: isinstance(value, str), "path": lambda: isinstance(value, (str, os.PathLike)),
                "dict": lambda: isinstance(value, dict), "choice": lambda: isinstance(value, str)}[kind]()

    def _in_range(self, value: Any) -> bool:
        # NaN compares false with every bound; inf passes a minimum, then overflows the first deadline
        # (or count) built from it, at the end of training rather than here.
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.minimum is not None and (value <= self.minimum if self.above else value < self.minimum):
            return False
        return self.maximum is None or value <= self.maximum

    def default_markdown(self) -> str:
        if self.default is REQUIRED:
            return "required"
        return f"`{self.shown if self.shown is not None else _code(self.default)}`"

    def but(self, **changes: Any) -> "Option":
        """This option with another doc (the same keyword meaning more in another component)."""
        return replace(self, **changes)


def _one_of(choices: tuple) -> str:
    shown = [repr(choice) for choice in choices]
    return " or ".join(shown) if len(shown) == 2 else "one of " + ", ".join(shown)


def _code(value: Any) -> str:
    """A default as Python code, strings in double quotes as the reference writes them."""
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, tuple):
        return "(" + ", ".join(_code(item) for item in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


class Options(Mapping[str, Option]):
    """One component's options, in its signature's order."""

    def __init__(self, *options: Option):
        self._options = {option.name: option for option in options}
        if len(self._options) != len(options):
            raise ValueError(f"options: a name is declared twice in {[o.name for o in options]}")
        self.defaults: dict[str, Any] = {o.name: o.default for o in options if o.default is not REQUIRED}

    def __getitem__(self, name: str) -> Option:
        return self._options[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def check(self, **values: Any) -> None:
        """Checks each value given against its option (on the caller's thread)."""
        for name, value in values.items():
            self._options[name].check(value)

    def check_names(self, names: Iterable[str], where: str, *, also: Iterable[str] = ()) -> None:
        """``TypeError`` naming the first of ``names`` that is not one of these options (nor in ``also``),
        and the closest valid one (see :func:`check_option_names`)."""
        check_option_names(names, [*self._options, *also], where)

    def markdown(self) -> str:
        """The reference table: option, default, meaning."""
        lines = ["| option | default | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{o.name}` | {o.default_markdown()} | {o.doc} |" for o in self._options.values()]
        return "\n".join(lines)


def check_option_names(names: Iterable[str], known: Iterable[str], where: str) -> None:
    """``TypeError`` for the first of ``names`` (keywords a caller gave) not in ``known``: it names
    ``where`` the keyword went (``logbus.start_run``), the keyword, and the closest known one, as
    Python's own "unexpected keyword argument" does not (3.11)."""
    known = list(known)
    for name in names:
        if name not in known:
            raise TypeError(f"{where}: expected one of its options, got {name!r}{suggestion(name, known)}")


def suggestion(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'close_timeout'?"`` for the closest of ``known`` to ``name`` (``difflib``), or
    the options there are when none is close."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (its options: {', '.join(known)})" if known else ""


_Init = TypeVar("_Init", bound=Callable[..., None])


def names_misspelt_options(where: str) -> Callable[[_Init], _Init]:
    """Decorates a constructor with an explicit signature so that a keyword it does not take raises
    :func:`check_option_names`'s ``TypeError`` (naming ``where`` and the closest keyword it does take)
    rather than Python's bare "unexpected keyword argument". Checked per construction, not per call
    of anything hot."""

    def decorate(init: _Init) -> _Init:
        takes = [parameter.name for parameter in inspect.signature(init).parameters.values()
                 if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                 and parameter.name != "self"]

        @functools.wraps(init)
        def checked(*args: Any, **options: Any) -> None:
            check_option_names(options, takes, where)
            init(*args, **options)

        return checked  # type: ignore[return-value]

    return decorate
