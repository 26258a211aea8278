"""The document model of a report: a list of :class:`Section`, each a list of blocks (tables, paragraphs, bullet
lists, images), rendered alike as Markdown (:mod:`metarec.reporting.markdown`), self-contained HTML
(:mod:`metarec.reporting.html`) and, for tables, plain text (:mod:`metarec.reporting.text`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "Bullets", "Image", "Paragraph", "Section", "Table"]


@dataclass(frozen=True)
class Table:
    """Cells as text; the first ``label_columns`` columns are left-aligned, the others right-aligned."""

    header: list[str]
    rows: list[list[str]]
    label_columns: int = 1


@dataclass(frozen=True)
class Paragraph:
    text: str
    warning: bool = False


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Image:
    path: Path
    caption: str


Block = Table | Paragraph | Bullets | Image


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
