"""Benchmark suites (pytest-benchmark) shipped with logbus, so that ``logbus bench`` measures on a
user's machine with exactly the code of the project's ``benchmarks/`` folder, which imports them."""
