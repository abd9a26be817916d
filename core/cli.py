"""The ``logbus`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import asdict

DEFAULT_EXPORT_ROWS = 1000  # `logbus view --export`: rows of each table (plugins/local/_view_export.py's)


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
    if args.export is None and (args.table or args.step or args.max_rows != DEFAULT_EXPORT_ROWS):
        print("logbus view: --table, --step and --max-rows: expected with --export, got them without it",
              file=sys.stderr)
        return 2
    try:
        if args.export is not None:
            from logbus.plugins.local import export_runs

            done = export_runs(args.run_dirs, args.export, tables=args.table, steps=args.step, max_rows=args.max_rows)
            print(f"logbus view: wrote {args.export}: {done['tables']} tables, {done['rows']} rows, "
                  f"{done['images']} images, no server needed")
            return 0
        from logbus.plugins.local import serve_runs

        serve_runs(args.run_dirs, host=args.host, port=args.port, open_browser=not args.no_browser)
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"logbus view: {error}", file=sys.stderr)
        return 2
    return 0


def _step_argument(text: str) -> int | None:
    if text == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


class _NoPandas:
    """A meta-path finder that says pandas is not installed (see :func:`lean_view_process`)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r} (not loaded by `logbus view`)", name=name)
        return None


def lean_view_process() -> None:
    """Sets up a process that only serves the viewer: its pyarrow allocator (below), and no pandas. pyarrow
    imports pandas, when installed, on its first Python scalar (``pyarrow.dataset`` makes one on import),
    and the viewer never makes a DataFrame: 130 MB RSS after the viewer's imports against 162 MB
    (measured here). Only for a process of its own (the ``logbus view`` command, the benchmark's
    server): pyarrow remembers that pandas is absent, so ``to_pandas`` fails in it afterwards. Pandas is
    left alone where it is already loaded."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())
    # pyarrow's default allocator (mimalloc) keeps what each request thread of the server freed: peak RSS
    # over every page of a 1,000,000-row store measured 297 MB with it, 248 MB with the system's (247 MB
    # with jemalloc, which not every pyarrow build has). Read once, when pyarrow loads; setting the pool
    # later (pyarrow.set_memory_pool) measured worse, 336 MB: the readers keep the pool they started with.
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


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
    view.add_argument("--export", metavar="FILE", help="write one self-contained HTML page of tables and steps to FILE "
                      "(opens from file://, no server) instead of serving")
    view.add_argument("--table", metavar="KEY", action="append",
                      help="with --export: a table to include (repeat for more; default every table)")
    view.add_argument("--step", metavar="N", action="append", type=_step_argument,
                      help="with --export: a step to include ('none': rows logged without one; repeat for more; "
                      "default each table's latest)")
    view.add_argument("--max-rows", metavar="N", type=int, default=DEFAULT_EXPORT_ROWS,
                      help="with --export: at most N rows of each table, shared by its steps (default 1000)")
    view.set_defaults(func=_view)
    bench = commands.add_parser("bench",
                                help="measure logging overhead on this machine (a few minutes; needs logbus[bench])")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument("--plot", default=None,
                       help="where to write the PNG chart (default: logbus-bench.png in $LOGBUS_DIR, else ./logbus_runs)")
    bench.add_argument("--no-plot", action="store_true")
    bench.add_argument("--full", action="store_true", help="the suites' own sizes, not the quick ones (several minutes)")
    bench.add_argument("--verbose", action="store_true", help="also show pytest-benchmark's own tables")
    bench.set_defaults(func=_bench)
    relink = commands.add_parser("wandb-relink", help="after moving an offline W&B run folder: point its run file at "
                                 "the files it holds, so that `wandb sync` finds them")
    relink.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="an offline run folder (wandb/offline-run-*)")
    relink.set_defaults(func=_wandb_relink)
    args = parser.parse_args(argv)
    if argv is None and args.command == "view" and args.export is None:  # the command itself, in its own process
        lean_view_process()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
