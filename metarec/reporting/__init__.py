"""Reports as Markdown and self-contained HTML from one document model, shared by every report of metarec.

A report is a list of :class:`Section` (paragraphs, bullet lists, tables, images) rendered by
:func:`render_markdown` and :func:`render_html`, so both documents always say the same; the HTML has inline CSS,
embeds the images as ``data:image/png`` URIs and needs neither the network nor JavaScript.
:func:`render_text_table` prints a table for the terminal. Numbers go through :func:`fmt` (4 significant digits),
:func:`fmt_p`, :func:`fmt_pct`, :func:`fmt_ci` and :func:`fmt_count`; missing or NaN values print as "—".

This package knows nothing of what a report is about: it imports no other part of metarec.
"""

from metarec.reporting.document import Block, Bullets, Image, Paragraph, Section, Table
from metarec.reporting.format import (
    MISSING,
    fmt,
    fmt_ci,
    fmt_count,
    fmt_p,
    fmt_pct,
    number,
    p_phrase,
    safe_name,
)
from metarec.reporting.html import data_uri, render_html
from metarec.reporting.markdown import render_markdown
from metarec.reporting.text import render_text_table

__all__ = [
    "MISSING",
    "Block",
    "Bullets",
    "Image",
    "Paragraph",
    "Section",
    "Table",
    "data_uri",
    "fmt",
    "fmt_ci",
    "fmt_count",
    "fmt_p",
    "fmt_pct",
    "number",
    "p_phrase",
    "render_html",
    "render_markdown",
    "render_text_table",
    "safe_name",
]
