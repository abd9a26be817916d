"""The one piece of Python's private API logbus uses (``logbus.bus._exit_hook``):
``threading._register_atexit``, which runs a hook when the main thread ends, before any ``atexit``
handler. These tests fail, loudly, when Python moves or changes it; the code itself then falls back
to plain ``atexit``, where a bus may drain after a backend has torn itself down."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import threading

from logbus.bus import _exit_hook

ORDER = """\
    import atexit, threading
    from logbus.bus._exit_hook import before_interpreter_exit
    {prelude}
    before_interpreter_exit(lambda: print("bus drained", flush=True))
    # Registered after the bus, as a backend that starts its service on first use registers its teardown:
    # atexit runs the last registered first, so only the private hook puts the bus before it.
    atexit.register(lambda: print("backend torn down", flush=True))
"""


def run_until_exit(prelude: str = "") -> list[str]:
    code = textwrap.dedent(ORDER).format(prelude=prelude)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")[:-1]


def test_pythons_hook_is_there_and_takes_a_callable():
    hook = _exit_hook.private_hook()
    assert hook is threading._register_atexit
    first = next(iter(inspect.signature(hook).parameters.values()))
    assert first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD), inspect.signature(hook)


def test_the_bus_drains_before_atexit_handlers_registered_after_it():
    assert run_until_exit() == ["bus drained", "backend torn down"]


def test_without_the_private_hook_atexit_still_drains_the_bus_but_last():
    # What a Python without the hook does: the fallback still calls the bus, in atexit's order.
    assert run_until_exit("del threading._register_atexit") == ["backend torn down", "bus drained"]
