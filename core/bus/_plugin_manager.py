"""Finds, loads and asks plugins what they register. Built lazily; nothing loads at import time.

Built-in plugins are listed in ``DEFAULT_PLUGINS`` and go through the same path as third-party ones
from the ``logbus`` entry-point group. pluggy stops at the first raising hookimpl and does not guard
``EntryPoint.load()``, so each plugin is loaded and asked on its own: a broken one is named in a
warning and skipped (``LOGBUS_STRICT=1`` re-raises instead). Broken includes registering a class that
lacks a method its contract requires (``logbus.hookspecs.Backend``/``Extractor``); what a function
factory returns is checked when it is called.

User controls, as in pytest and datasette:

- ``LOGBUS_LOAD_PLUGINS=dist-a,dist-b``: load only these third-party distributions (empty: none).
- ``LOGBUS_DISABLE_PLUGIN_AUTOLOAD=1``: load no third-party plugin unless ``LOGBUS_LOAD_PLUGINS``
  names it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import os
import re
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from logbus import hookspecs
from logbus.options import check_option_names, suggestion

ENTRY_POINT_GROUP = "logbus"
DEFAULT_PLUGINS = (
    "logbus.plugins.wandb",
    "logbus.plugins.local",
    "logbus.plugins.tensorboard",
    "logbus.plugins.extractors",
)
KINDS = ("backend", "extractor")
CONTRACTS = {"backend": hookspecs.Backend, "extractor": hookspecs.Extractor}  # what each kind's factory returns


class PluginWarning(UserWarning):
    """A plugin could not be loaded or could not register; it was skipped."""


class UnknownPluginError(KeyError):
    def __str__(self):  # KeyError quotes its message; this one is a sentence
        return str(self.args[0])


@dataclass(frozen=True)
class Registration:
    """One thing a plugin registered, and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    distribution: str | None
    version: str | None


@dataclass
class PluginInfo:
    """A plugin as ``logbus plugins`` shows it."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    registers: list[str] = field(default_factory=list)
    error: str | None = None
    status: str = "loaded"  # builtin | loaded | disabled (autoload off / not allowlisted) | failed


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _strict() -> bool:
    return _flag("LOGBUS_STRICT")


def _normalise(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _allowed_distributions() -> tuple[set[str] | None, str]:
    """The allowlist and why a plugin outside it is not loaded. None means "every installed plugin";
    a set is an allowlist (possibly empty). Names are separated by commas, with or without spaces."""
    allow = os.environ.get("LOGBUS_LOAD_PLUGINS")
    if allow is not None:
        return ({_normalise(name.strip()) for name in allow.split(",") if name.strip()},
                f"not named in LOGBUS_LOAD_PLUGINS={allow!r}")
    if _flag("LOGBUS_DISABLE_PLUGIN_AUTOLOAD"):
        return set(), "LOGBUS_DISABLE_PLUGIN_AUTOLOAD is set and LOGBUS_LOAD_PLUGINS does not name it"
    return None, ""


class PluginHost:
    """Owns the pluggy manager and the registries of backends and extractors."""

    def __init__(self, *, load_entry_points: bool = True):
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.skipped: list[PluginInfo] = []  # found but not loaded: disabled, not allowlisted or broken
        self.registry: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        for module_name in DEFAULT_PLUGINS:
            self._add(functools.partial(importlib.import_module, module_name), name=module_name,
                      module=module_name, distribution="logbus", version=_version("logbus"), builtin=True)
        if load_entry_points:
            self._load_entry_points()

    # -- loading ---------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        allowed, why_not = _allowed_distributions()
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            dist_name = dist.metadata["Name"] if dist is not None else None
            info_args: dict[str, Any] = dict(name=entry_point.name, module=entry_point.value, distribution=dist_name,
                                             version=dist.version if dist is not None else None, builtin=False)
            # The allowlist takes distribution names (as pip shows them) or entry-point names.
            if allowed is not None and not {_normalise(dist_name or ""), _normalise(entry_point.name)} & allowed:
                self.skipped.append(PluginInfo(**info_args, status="disabled", error=f"not loaded: {why_not}"))
                continue
            self._add(entry_point.load, **info_args)

    def add_plugin(self, plugin: object, name: str | None = None) -> PluginInfo | None:
        """Registers an already-imported plugin object (a module or any object with hookimpls)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        return self._add(lambda: plugin, name=name, module=getattr(plugin, "__name__", name),
                         distribution=None, version=None, builtin=False)

    def _add(self, load: Callable[[], object], **info_args) -> PluginInfo | None:
        info = PluginInfo(**info_args)
        plugin = None
        try:
            plugin = load()
            self.manager.register(plugin, name=info.name)
            # A hookimpl whose name matches no hook (a typo such as ``register_backend``) would
            # otherwise load "fine" and register nothing. pluggy's own check says so naming the
            # plugin object (a module's file path); this names the plugin and the hook it meant.
            self._check_hook_names(plugin, info.name)
            self.manager.check_pending()
            info.hooks = sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or [])
            self._collect(plugin, info)
        except Exception as error:  # noqa: BLE001 - any plugin failure is isolated here
            if plugin is not None and self.manager.is_registered(plugin):
                self.manager.unregister(plugin)
            info.error = f"{type(error).__name__}: {error}"
            info.status = "failed"
            self.skipped.append(info)
            if _strict():
                raise
            warnings.warn(
                f"logbus plugin {info.name!r} ({info.distribution or 'no distribution'} {info.version or ''}) "
                f"failed and was skipped: {info.error}\n{traceback.format_exc(limit=-3)}",
                PluginWarning,
                stacklevel=3,
            )
            return None
        info.status = "builtin" if info.builtin else "loaded"
        self.plugins.append(info)
        return info

    def _check_hook_names(self, plugin: object, plugin_name: str) -> None:
        hooks = sorted(name for name, caller in vars(self.manager.hook).items()
                       if not name.startswith("_") and caller.has_spec())
        for caller in self.manager.get_hookcallers(plugin) or []:
            if caller.has_spec() or all(impl.plugin is not plugin or impl.optionalhook
                                        for impl in caller.get_hookimpls()):
                continue
            raise ValueError(f"plugin {plugin_name!r}: expected hooks among {', '.join(hooks)}, got "
                             f"{caller.name!r}{suggestion(caller.name, hooks)}")

    def _collect(self, plugin: object, info: PluginInfo) -> None:
        """Asks one plugin what it registers; all-or-nothing, so a failing plugin leaves no half-state."""
        staged: list[Registration] = []
        for kind in KINDS:
            hook_caller = getattr(self.manager.hook, f"register_{kind}s")
            for impl in hook_caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue

                def register(name: str, factory: Callable[..., Any], *, description: str = "", _kind=kind):
                    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                        raise ValueError(f"register: name must match [A-Za-z0-9_.-]+, got {name!r}")
                    if not callable(factory):
                        raise TypeError(f"register({name!r}): factory must be callable, got {factory!r}")
                    # A class can be checked now, before anyone asks for it; a function only once it
                    # has returned its object (in ``create``).
                    if inspect.isclass(factory) and (missing := hookspecs.missing_members(factory, CONTRACTS[_kind])):
                        raise TypeError(f"register({name!r}): expected a class with {_contract(_kind)}, "
                                        f"got {factory.__qualname__}, which lacks {', '.join(missing)}")
                    taken = self.registry[_kind].get(name) or next(
                        (r for r in staged if r.kind == _kind and r.name == name), None)
                    if taken is not None:
                        raise ValueError(
                            f"{_kind} {name!r} from plugin {info.name!r} is already registered by plugin {taken.plugin!r}"
                        )
                    staged.append(Registration(_kind, name, factory, description, info.name,
                                               info.distribution, info.version))

                impl.function(register=register)
        for registration in staged:
            self.registry[registration.kind][registration.name] = registration
            info.registers.append(f"{registration.kind}:{registration.name}")

    # -- lookups ---------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Registration:
        try:
            return self.registry[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.registry[kind])) or "none"
            message = f"unknown {kind} {name!r}; known {kind}s: {known}"
            # What a plugin registers is known only once it has loaded: name every skipped one and why.
            if self.skipped:
                message += "; skipped plugins, which may register it: " + "; ".join(
                    f"{p.name!r} ({p.distribution or 'no distribution'} {p.version or ''}".rstrip() + f") {p.error}"
                    for p in self.skipped)
            raise UnknownPluginError(message) from None

    def create(self, kind: str, name: str, /, *, also_known: tuple[str, ...] = (), **options: Any) -> Any:
        """A new object from the factory registered as ``name``, checked against its kind's contract,
        so that a factory returning an incomplete object fails here, naming its plugin, rather than
        on a writer thread later. An option the factory does not take is a ``TypeError`` naming the
        closest one it (or ``also_known``: the caller's other options, which a misspelt one may have
        meant) takes."""
        # Positional-only: ``options`` are the factory's, whatever their names (``name``, ``kind``).
        registration = self.get(kind, name)
        _check_keywords(registration.factory, options, f"{kind} {name!r}", also_known)
        created = registration.factory(**options)
        missing = hookspecs.missing_members(created, CONTRACTS[kind])
        if missing:
            raise TypeError(f"{kind} {name!r} from plugin {registration.plugin!r}: expected its factory to return "
                            f"an object with {_contract(kind)}, got {type(created).__qualname__}, which lacks "
                            f"{', '.join(missing)}")
        return created


def _check_keywords(factory: Callable[..., Any], options: dict[str, Any], where: str,
                    also_known: tuple[str, ...]) -> None:
    """Names a misspelt option before the factory's call would fail with Python's bare "unexpected
    keyword argument" (or, for a class, name only the class). A factory that imports its class on
    first use (``**options`` only) says which with ``imported()``."""
    imported = getattr(factory, "imported", None)
    if callable(imported):
        factory = imported()
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: its own error must do
        return
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return
    takes = [parameter.name for parameter in parameters
             if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    check_option_names(options, [*takes, *also_known], where)


def _contract(kind: str) -> str:
    """``log() and close() (logbus.hookspecs.Backend)``: the required members of ``kind``, for messages."""
    protocol = CONTRACTS[kind]
    members = [f"{name}()" if is_method else name for name, is_method in hookspecs.protocol_members(protocol).items()]
    return f"{', '.join(members[:-1])} and {members[-1]} (logbus.hookspecs.{protocol.__name__})"


def _version(dist_name: str) -> str | None:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None


_host: PluginHost | None = None
_host_lock = threading.RLock()  # re-entrant: a plugin that looks up while loading gets an error, not a hang
_loading = False


def get_plugin_host() -> PluginHost:
    """The process-wide plugin host, built on first use."""
    global _host, _loading
    with _host_lock:
        if _host is None:
            if _loading:
                raise RuntimeError("logbus plugins are still loading: a plugin must not look up backends or "
                                   "extractors when it is imported or registers; do it in its factory")
            _loading = True
            try:
                _host = PluginHost()
            finally:
                _loading = False
        return _host


def reset_plugins() -> None:
    """Forgets every loaded plugin; the next lookup loads again (tests, or after changing the env)."""
    global _host
    with _host_lock:
        _host = None


def create_backend(name: str, /, **options: Any) -> hookspecs.Backend:
    """A new backend registered as ``name``; every option is passed to its factory (``name``
    included: ``create_backend("wandb", name="run-7")`` names the W&B run)."""
    return get_plugin_host().create("backend", name, **options)


def create_extractor(name: str, /, *, also_known: tuple[str, ...] = (), **options: Any) -> hookspecs.Extractor:
    """A new extractor registered as ``name``; every option is passed to its factory. ``also_known``:
    the caller's own options (the pipeline's), named when a misspelt one reached the extractor."""
    return get_plugin_host().create("extractor", name, also_known=also_known, **options)
