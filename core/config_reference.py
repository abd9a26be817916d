"""The docs' "Configuration reference" (``docs/reference/options.md``), rendered from the options'
declarations (``logbus.options``).

``python -m logbus.config_reference`` prints the tables and ``--update docs/reference/options.md``
rewrites them; ``tests/guarantees/test_docs.py`` checks the page equals what this renders. It imports every component
(Composer, torch, the built-in plugins) to reach their tables, so it is for docs and tests only, and
nothing in logbus imports it.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Mapping

from logbus.options import Options


def reference() -> dict[str, Options]:
    """Heading of the "Configuration reference" page -> the options its table shows. Imports the
    components (Composer, torch) and loads the built-in plugins, so it is for docs and tests only."""
    from logbus.bus import PluginHost
    from logbus.composer import LOGBUS_LOGGER_OPTIONS, SAMPLE_LOGGER_OPTIONS
    from logbus.plugins.extractors import BUILTIN_EXTRACTORS
    from logbus.run_context import START_RUN_OPTIONS
    from logbus.samples import PIPELINE_OPTIONS

    tables = {"`logbus.start_run`": START_RUN_OPTIONS, "`LogBusLogger`": LOGBUS_LOGGER_OPTIONS}
    backends = PluginHost(load_entry_points=False).registry["backend"]
    tables["`WandBLogger` and the `wandb` backend"] = _options_of(backends["wandb"].factory)
    tables["`SampleLogger`"] = SAMPLE_LOGGER_OPTIONS
    tables["Sample pipeline options"] = PIPELINE_OPTIONS
    for name, (module, class_name, _) in BUILTIN_EXTRACTORS.items():
        tables[f"`{name}` extractor"] = _options_of(getattr(__import__(module, fromlist=[class_name]), class_name))
    for name, registration in backends.items():
        if name != "wandb":
            tables[f"`{name}` backend"] = _options_of(registration.factory)
    return tables


def _options_of(component: Any) -> Options:
    """A built-in backend's or extractor's class declares its options as ``options``."""
    options = component.options
    assert isinstance(options, Options), f"{component!r}: expected an Options table as .options"
    return options


def update_page(text: str, tables: Mapping[str, Options]) -> str:
    """``text`` with the first table under each ``### heading`` of ``tables`` replaced by its rendering.

    :param text: the configuration reference page.
    :param tables: :func:`reference`.
    """
    for heading, options in tables.items():
        section = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^#|\Z)", text, flags=re.M | re.S)
        if section is None:
            raise ValueError(f"page: no section '### {heading}'")
        table = re.search(r"^\|.*\n(?:^\|.*\n)*", section.group(1), flags=re.M)
        if table is None:
            raise ValueError(f"page: no table under '### {heading}'")
        start, end = section.start(1) + table.start(), section.start(1) + table.end()
        text = text[:start] + options.markdown() + "\n" + text[end:]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logbus.config_reference",
                                     description="Print (or write into the docs page) the configuration reference tables.")
    parser.add_argument("--update", metavar="PAGE",
                        help="rewrite the tables of this page (docs/reference/options.md) in place")
    args = parser.parse_args(argv)
    tables = reference()
    if args.update:
        with open(args.update, encoding="utf-8") as file:
            text = file.read()
        with open(args.update, "w", encoding="utf-8") as file:
            file.write(update_page(text, tables))
        return 0
    for heading, options in tables.items():
        print(f"### {heading}\n\n{options.markdown()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
