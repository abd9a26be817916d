"""The demo room: ``logbus demo`` (a small CNN trained with Composer) and the digits data it ships in ``data/``.
May import every part of ``logbus`` (it is an application of it); only the CLI, the test kit and benchmarks import it.
"""

from logbus.demo._demo import DigitsCNN, digits_loaders, load_digits, main

__all__ = ["DigitsCNN", "digits_loaders", "load_digits", "main"]
