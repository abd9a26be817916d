"""MkDocs hook: links from a page to the project's own files outside ``docs/`` (tests, sources, the
example plugin). The pages are also read on GitHub, where ``../tests/x.py`` is the file; the built site
has no such file, so there the link becomes the path it names, as code. A link to a path that does not
exist in the checkout fails the build, as a broken link inside ``docs/`` does.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError

_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s#]+)(#[^)\s]*)?\)")
_FENCE = re.compile(r"^```.*?^```", flags=re.M | re.S)


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    here = (docs / page.file.src_uri).parent

    def replace(match: re.Match) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            return match.group(0)
        resolved = Path(posixpath.normpath((here / target).as_posix()))
        if resolved.is_relative_to(docs):
            return match.group(0)  # MkDocs checks these itself
        if not resolved.exists():
            raise PluginError(f"{page.file.src_uri}: link to a missing file: {target}")
        path = resolved.relative_to(root).as_posix()
        return label if path in label else f"{label} (`{path}`)"

    parts, last = [], 0
    for fence in _FENCE.finditer(markdown):  # links inside code are not links
        parts.append(_LINK.sub(replace, markdown[last:fence.start()]))
        parts.append(fence.group(0))
        last = fence.end()
    parts.append(_LINK.sub(replace, markdown[last:]))
    return "".join(parts)
