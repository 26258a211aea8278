"""A report table as aligned plain-text columns, for the terminal."""

from __future__ import annotations

from metarec.reporting.document import Table

__all__ = ["render_text_table"]


def render_text_table(table: Table) -> str:
    """``table`` as aligned plain-text columns."""
    widths = [max(len(cell) for cell in column) for column in zip(table.header, *table.rows, strict=True)]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(width) if i < table.label_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(table.header), rule, *(line(row) for row in table.rows)])
