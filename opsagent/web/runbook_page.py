"""A runbook as a readable page (``/runbooks/<Alert>``); ``/runbooks/<Alert>.md`` stays raw Markdown.

Rendered with markdown-it-py (CommonMark plus tables) with raw HTML disabled:
runbooks are package data, but nothing we serve should execute markup written
elsewhere. Rendered once per runbook and cached; the text never changes while
the agent runs.
"""

from __future__ import annotations

import functools
import html

from markdown_it import MarkdownIt

from opsagent.web.style import page_head

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


@functools.lru_cache(maxsize=64)
def runbook_html(name: str, text: str) -> bytes:
    """The whole HTML document for one runbook."""
    body = _MD.render(text)
    e = html.escape
    return (
        page_head(f"Runbook {e(name)} · opsagent", refresh=None)
        + "<body><header><nav aria-label='breadcrumb'><a href='/'>← status page</a> · "
        f"<a href='/runbooks/{e(name, quote=True)}.md'>Markdown source</a></nav></header>"
        f"<main class='runbook'>{body}</main></body></html>"
    ).encode()
