"""A report as one self-contained HTML page: inline CSS, every text escaped, images embedded as ``data:image/png``
URIs; it needs neither the network nor JavaScript."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from metarec.reporting.document import Block, Bullets, Image, Paragraph, Section, Table

__all__ = ["CSS", "data_uri", "render_html"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 60rem; margin: 0 auto; padding: 1rem 2rem 3rem; background: #fff; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e5e5e5; text-align: left; }
th { background: #f2f2f2; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
p.warning { background: #fff3cd; border-left: 4px solid #e0a800; padding: .5rem .8rem; font-weight: bold; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .9rem; }
"""
NUMERIC = ' class="num"'
WARNING = ' class="warning"'


def data_uri(path: Path) -> str:
    """The PNG at ``path`` as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(table: Table) -> str:
    def cells(tag: str, row: list[str]) -> str:
        return "".join(
            f"<{tag}{'' if i < table.label_columns else NUMERIC}>{escape(cell)}</{tag}>" for i, cell in enumerate(row)
        )

    body = "\n".join(f"<tr>{cells('td', row)}</tr>" for row in table.rows)
    return f"<table>\n<thead><tr>{cells('th', table.header)}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _html_block(block: Block) -> str:
    match block:
        case Table():
            return _html_table(block)
        case Paragraph():
            return f"<p{WARNING if block.warning else ''}>{escape(block.text)}</p>"
        case Bullets():
            return "<ul>\n" + "\n".join(f"<li>{escape(item)}</li>" for item in block.items) + "\n</ul>"
        case Image():
            caption = escape(block.caption)
            return (
                f'<figure><img src="{data_uri(block.path)}" alt="{caption}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
    raise TypeError(f"not a report block: {block!r}")


def render_html(title: str, sections: list[Section]) -> str:
    body = []
    for section in sections:
        body.append(f"<section>\n<h2>{escape(section.title)}</h2>")
        body.extend(_html_block(block) for block in section.blocks)
        body.append("</section>")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n<h1>{escape(title)}</h1>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )
