"""Python's private API that logbus relies on, in one place: ``threading._register_atexit``.

Backends tear themselves down in their own ``atexit`` handlers (wandb stops its service process), and
Composer closes its callbacks from one too; whatever order those were registered in, a bus must
deliver and finish first. Hooks given to ``threading._register_atexit`` run when the main thread ends,
before any ``atexit`` handler, which no public API offers. Nothing here is public Python API:
``tests/bus/test_exit_hook.py`` fails loudly when it moves or changes, and at run time a missing hook
falls back to plain ``atexit`` (which runs in reverse order of registration, so a backend registered
after the bus may then be torn down before the bus has drained into it).
"""

from __future__ import annotations

import atexit
import threading
from typing import Callable

__all__ = ["before_interpreter_exit", "private_hook"]


def private_hook() -> Callable[..., None]:
    """``threading._register_atexit``. Raises ``AttributeError`` when Python no longer has it."""
    return threading._register_atexit  # type: ignore[attr-defined]


def before_interpreter_exit(callback: Callable[[], None]) -> None:
    """Calls ``callback()`` when the main thread ends, before any ``atexit`` handler runs; where Python
    has no such hook, or the interpreter is already shutting down, through plain ``atexit``."""
    try:
        private_hook()(callback)
    except (AttributeError, RuntimeError):  # no such hook, or too late to register one
        atexit.register(callback)
