"""A report as Markdown: ``# title``, one ``## section`` each, pipe tables, images linked relative to a folder."""

from __future__ import annotations

import os
from pathlib import Path

from metarec.reporting.document import Block, Bullets, Image, Paragraph, Section, Table

__all__ = ["render_markdown"]


def _md_cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def _md_block(block: Block, base: Path) -> str:
    """One block as Markdown; image paths relative to ``base``."""
    match block:
        case Table():
            align = ["---" if i < block.label_columns else "---:" for i in range(len(block.header))]
            lines = [block.header, align, *block.rows]
            return "\n".join("| " + " | ".join(_md_cell(cell) for cell in line) + " |" for line in lines)
        case Paragraph(warning=True):
            return f"> **{block.text}**"
        case Paragraph():
            return block.text
        case Bullets():
            return "\n".join(f"- {item}" for item in block.items)
        case Image():
            return f"![{block.caption}]({Path(os.path.relpath(block.path, base)).as_posix()})\n\n*{block.caption}*"
    raise TypeError(f"not a report block: {block!r}")


def render_markdown(title: str, sections: list[Section], base: Path) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts.extend(_md_block(block, base) for block in section.blocks)
    return "\n\n".join(parts) + "\n"
