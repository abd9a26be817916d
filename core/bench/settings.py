"""How much a benchmark run measures, from the environment: the suites' rounds and sizes.

``LOGBUS_BENCH_ROUNDS`` sets the rounds of the two suites whose rounds are whole evals (eval, sample
pipeline; the logging and W&B tables suites are cheap and keep their own); ``LOGBUS_BENCH_SIZES``
(``224:64``, or ``32:1024,224:64``) the images per eval of the eval and sample pipeline suites, by image
side; ``LOGBUS_BENCH_QUICK`` (any non-empty value) runs the suites at the quick sizes ``logbus bench``
uses. The kernel and PNG suites are timed by pytest-benchmark's own calibration
(``--benchmark-min-rounds``, ``--benchmark-max-time``).
``docs/benchmarks.md`` documents the variables and what ``make bench`` sets.
"""

from __future__ import annotations

import os

__all__ = ["MIN_ROUNDS", "QUICK_ENV", "ROUNDS_ENV", "SIZES_ENV", "quick", "rounds", "sizes"]

ROUNDS_ENV = "LOGBUS_BENCH_ROUNDS"
SIZES_ENV = "LOGBUS_BENCH_SIZES"
QUICK_ENV = "LOGBUS_BENCH_QUICK"
# A figure is a median with its spread (min to max over the rounds), and a ratio's within-noise mark
# compares two spreads: fewer rounds than this leave too little spread to read.
MIN_ROUNDS = 3


def quick() -> bool:
    """Whether the suites run at their quick sizes (``$LOGBUS_BENCH_QUICK`` set and not empty)."""
    return bool(os.environ.get(QUICK_ENV))


def rounds(default: int) -> int:
    """The rounds a suite times: ``$LOGBUS_BENCH_ROUNDS`` where set, else ``default``.

    :param default: the suite's own number of rounds.
    """
    value = os.environ.get(ROUNDS_ENV)
    if not value:
        return default
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{ROUNDS_ENV}: expected a whole number of rounds >= {MIN_ROUNDS}, got {value!r}") from None
    if count < MIN_ROUNDS:
        raise ValueError(f"{ROUNDS_ENV}: expected a whole number of rounds >= {MIN_ROUNDS}, got {count}")
    return count


def sizes(default: dict[int, int]) -> dict[int, int]:
    """Images per eval by image side: ``default`` with the counts ``$LOGBUS_BENCH_SIZES`` gives
    (``side:count`` pairs separated by commas) in place of its own.

    :param default: the suite's own counts, ``{side: images}``; the variable may name only these sides.
    """
    value = os.environ.get(SIZES_ENV, "").strip()
    if not value:
        return dict(default)
    expected = f"side:images pairs separated by commas, sides among {sorted(default)} (such as '224:64')"
    chosen = dict(default)
    for pair in value.split(","):
        side, _, count = pair.strip().partition(":")
        try:
            side_px, images = int(side), int(count)
        except ValueError:
            raise ValueError(f"{SIZES_ENV}: expected {expected}, got {value!r}") from None
        if side_px not in default or images < 1:
            raise ValueError(f"{SIZES_ENV}: expected {expected}, got {value!r}")
        chosen[side_px] = images
    return chosen
