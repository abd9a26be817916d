"""The ``logbus`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import asdict


def _plugins(args: argparse.Namespace) -> int:
    from logbus.bus import get_plugin_host

    with warnings.catch_warnings(record=True) as caught:  # a broken plugin is shown, not fatal
        warnings.simplefilter("always")
        host = get_plugin_host()
    for warning in caught:
        print(f"warning: {warning.message}".splitlines()[0], file=sys.stderr)
    plugins = host.plugins + (host.skipped if args.all else [])
    if args.json:
        print(json.dumps([asdict(p) for p in plugins], indent=2))
        return 0
    rows = [("name", "version", "distribution", "registers", "status")]
    for p in plugins:
        status = p.status if p.error is None else f"{p.status}: {p.error}"
        rows.append((p.name, p.version or "-", p.distribution or "-", ", ".join(p.registers) or "-", status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0


def _demo(args: argparse.Namespace) -> int:
    from logbus.demo import main as demo_main

    return demo_main(epochs=args.epochs, backends=args.backends.split(","))


def _view(args: argparse.Namespace) -> int:
    from logbus.plugins.local import serve_runs

    try:
        serve_runs(args.run_dirs, host=args.host, port=args.port, open_browser=not args.no_browser)
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"logbus view: {error}", file=sys.stderr)
        return 2
    return 0


def _bench(args: argparse.Namespace) -> int:
    from logbus.bench.report import main as bench_main

    return bench_main(as_json=args.json, plot_path=None if args.no_plot else (args.plot or default_plot_path()),
                      full=args.full, verbose=args.verbose)


def _wandb_relink(args: argparse.Namespace) -> int:
    from logbus.plugins._wandb_run_file import relink

    status = 0
    for run_dir in args.run_dirs:
        try:
            changed, missing = relink(run_dir)
        except (OSError, ValueError) as error:
            print(f"logbus wandb-relink: {run_dir}: {error}", file=sys.stderr)
            status = 2
            continue
        print(f"{run_dir}: {changed} paths rewritten; " + (f"{len(missing)} files missing" if missing
                                                             else "every file the run names is in the folder"))
        for path in missing:
            print(f"  missing: {path}", file=sys.stderr)
        status = status or (1 if missing else 0)
    return status


def default_plot_path() -> str:
    """``logbus bench``'s chart goes beside the local runs (``$LOGBUS_DIR``, else ``./logbus_runs``),
    never loose in the current folder."""
    from logbus.plugins.local import DEFAULT_ROOT

    return os.path.join(os.environ.get("LOGBUS_DIR") or DEFAULT_ROOT, "logbus-bench.png")


def version() -> str:
    """The installed distribution's version (the wheel's metadata), else the package's own."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("logbus")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        from logbus import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="logbus", description="Plugin-based logging bus for Composer.")
    parser.add_argument("--version", action="version", version=f"logbus {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    plugins = commands.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--all", action="store_true", help="also list plugins that were skipped or failed")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=_plugins)
    demo = commands.add_parser("demo", help="train a small CNN on the digits data with Composer and log it")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--backends", default="wandb,local", help="comma-separated backend names")
    demo.set_defaults(func=_demo)
    view = commands.add_parser("view", help="serve run folders to a browser: metrics, samples, confusion matrices")
    view.add_argument("run_dirs", metavar="RUN_DIR", nargs="+",
                      help="local run folders (logbus_runs/<name>); ranks of one run are merged, runs overlaid")
    view.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; another is warned about)")
    view.add_argument("--port", type=int, default=6007, help="TCP port (default 6007; 0 picks a free one)")
    view.add_argument("--no-browser", action="store_true", help="print the URL, do not open a browser")
    view.set_defaults(func=_view)
    bench = commands.add_parser("bench",
                                help="measure logging overhead on this machine (a few minutes; needs logbus[bench])")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument("--plot", default=None,
                       help="where to write the PNG chart (default: logbus-bench.png in $LOGBUS_DIR, else ./logbus_runs)")
    bench.add_argument("--no-plot", action="store_true")
    bench.add_argument("--full", action="store_true", help="the full sizes of `make bench` (several minutes)")
    bench.add_argument("--verbose", action="store_true", help="also show pytest-benchmark's own tables")
    bench.set_defaults(func=_bench)
    relink = commands.add_parser("wandb-relink", help="after moving an offline W&B run folder: point its run file at "
                                 "the files it holds, so that `wandb sync` finds them")
    relink.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="an offline run folder (wandb/offline-run-*)")
    relink.set_defaults(func=_wandb_relink)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
