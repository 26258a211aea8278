"""The fidelity report of a calibrated simulator: ``fidelity.md``, a self-contained ``fidelity.html`` and PNG plots.

:func:`write_fidelity_report` turns the flat dict of :func:`metarec.calibration.fidelity.compare` (plus any other
numbers, such as ``recall@10_sim`` and ``recall@10_popularity``) into a report with

* **Targets** -- one plain-language line per calibration target, marked met / not met / not evaluated with its
  numbers: the rating or engagement distribution within a KS distance of 0.1, the popularity Gini within 10% of
  the real one, and the simulated choice model's recall@10 at least 10% above the popularity baseline's;
* **Numbers** -- every fidelity number: real and simulated side by side where the dict has both, then the rest;
* **Plots** -- for each ``(real, simulated)`` pair given: overlaid histograms, or for ``popularity`` the Lorenz
  curves of the item counts with the line of equality.

It is built from the document model and renderers of :mod:`metarec.reporting`, as the A/B test report is, so both
reports look and format numbers alike (4 significant digits, "—" for a missing number) and the HTML embeds its plots
as ``data:image/png`` URIs and needs neither the network nor JavaScript.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from metarec.reporting import (
    Block,
    Bullets,
    Image,
    Paragraph,
    Section,
    Table,
    fmt,
    render_html,
    render_markdown,
    safe_name,
)

__all__ = ["KS_TARGET", "POPULARITY_GINI_TARGET", "RECALL_LIFT_TARGET", "Target", "targets", "write_fidelity_report"]

KS_TARGET = 0.1  # largest KS distance between the real and simulated rating / engagement distributions
POPULARITY_GINI_TARGET = 0.1  # largest relative error of the simulated popularity Gini
RECALL_LIFT_TARGET = 0.1  # smallest relative lift of the choice model's recall@10 over popularity's

MET, NOT_MET, NOT_EVALUATED = "met", "not met", "not evaluated"
VALUE_LABELS = {"rating": "Rating", "engagement": "Engagement"}


@dataclass(frozen=True)
class Target:
    """A calibration target: its label, whether it is met (None: not evaluated) and the numbers behind it."""

    label: str
    met: bool | None
    detail: str

    @property
    def status(self) -> str:
        return NOT_EVALUATED if self.met is None else MET if self.met else NOT_MET

    @property
    def line(self) -> str:
        """``<label>: <status> -- <detail>`` for the report."""
        return f"{self.label}: {self.status} — {self.detail}"


def _number(x: Any) -> float | None:
    """``x`` as a finite float, or None."""
    if x is None or isinstance(x, bool):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _at_most(value: float, bound: float) -> bool:
    """``value <= bound``, with a bound met exactly up to rounding (``0.55 / 0.5 - 1`` is 0.1 here)."""
    return value <= bound or math.isclose(value, bound, rel_tol=1e-9, abs_tol=1e-12)


def _value_target(fidelity: dict[str, Any], key: str) -> Target:
    label = f"{VALUE_LABELS.get(key, key.capitalize())} distribution"
    ks = _number(fidelity.get(f"{key}_ks"))
    if ks is None:
        return Target(label, None, f"the KS distance could not be computed (target ≤ {fmt(KS_TARGET)}).")
    relation = "≤" if ks <= KS_TARGET else ">"
    return Target(
        label,
        ks <= KS_TARGET,
        f"KS distance between the real and simulated {key}s {fmt(ks)} {relation} {fmt(KS_TARGET)}.",
    )


def _popularity_target(fidelity: dict[str, Any]) -> Target:
    label = "Popularity Gini"
    real, sim = _number(fidelity.get("popularity_gini_real")), _number(fidelity.get("popularity_gini_sim"))
    error = _number(fidelity.get("popularity_gini_rel_error"))
    if error is None and real and sim is not None:
        error = abs(sim - real) / abs(real)
    if error is None:
        return Target(
            label,
            None,
            f"the relative error could not be computed (simulated {fmt(sim)}, real {fmt(real)}; "
            f"target within {100 * POPULARITY_GINI_TARGET:g}%).",
        )
    met = _at_most(error, POPULARITY_GINI_TARGET)
    return Target(
        label,
        met,
        f"simulated {fmt(sim)} vs real {fmt(real)}, a relative error of {100 * error:.1f}% "
        f"({'within' if met else 'outside'} {100 * POPULARITY_GINI_TARGET:g}%).",
    )


def _recall_target(fidelity: dict[str, Any]) -> Target:
    label = "Recall@10 of the choice model vs popularity"
    sim, popularity = _number(fidelity["recall@10_sim"]), _number(fidelity["recall@10_popularity"])
    if sim is None or popularity is None:
        return Target(
            label, None, f"a recall could not be computed (simulated {fmt(sim)}, popularity {fmt(popularity)})."
        )
    needed = (1 + RECALL_LIFT_TARGET) * popularity
    # "Above" needs a strict gain too: with a popularity recall of 0, a recall of 0 is no improvement.
    met = _at_most(needed, sim) and sim > popularity
    lift = f"{100 * (sim / popularity - 1):+.1f}%" if popularity > 0 else "popularity has no hit"
    return Target(
        label,
        met,
        f"simulated choice model {fmt(sim)} vs popularity {fmt(popularity)} ({lift}); at least "
        f"{100 * RECALL_LIFT_TARGET:g}% above popularity ({fmt(needed)}) needed.",
    )


def targets(fidelity: dict[str, Any]) -> list[Target]:
    """The calibration targets that ``fidelity`` has numbers for, in a fixed order.

    Args:
        fidelity: Fidelity numbers, e.g. from :func:`metarec.calibration.fidelity.compare`.

    Returns:
        One target per ``<value>_ks`` key (rating, engagement), one for the popularity Gini when the dict has its
        numbers, and one for recall@10 when both ``recall@10_sim`` and ``recall@10_popularity`` are present.
    """
    found = [_value_target(fidelity, key) for key in VALUE_LABELS if f"{key}_ks" in fidelity]
    if any(key in fidelity for key in ("popularity_gini_rel_error", "popularity_gini_real", "popularity_gini_sim")):
        found.append(_popularity_target(fidelity))
    if "recall@10_sim" in fidelity and "recall@10_popularity" in fidelity:
        found.append(_recall_target(fidelity))
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Tables


def _cell(value: Any) -> str:
    """A number of the report: integers in full (``12,345``), other numbers to 4 digits, anything else as text."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{value:,}"
    if value is None or isinstance(value, float | np.floating):
        return fmt(value)
    return str(value)


def number_tables(fidelity: dict[str, Any]) -> list[Table]:
    """Real and simulated side by side for every ``<name>_real`` with a ``<name>_sim``, then every other number."""
    paired = [key[: -len("_real")] for key in fidelity if key.endswith("_real") and f"{key[:-5]}_sim" in fidelity]
    rows = [[name, _cell(fidelity[f"{name}_real"]), _cell(fidelity[f"{name}_sim"])] for name in paired]
    used = {f"{name}_{side}" for name in paired for side in ("real", "sim")}
    others = [[key, _cell(value)] for key, value in fidelity.items() if key not in used]
    tables = []
    if rows:
        tables.append(Table(["number", "real", "simulated"], rows))
    if others:
        tables.append(Table(["number", "value"], others))
    return tables


# ---------------------------------------------------------------------------------------------------------------------
# Plots


def _finite_values(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _histogram_figure(name: str, real: np.ndarray, simulated: np.ndarray) -> Figure | None:
    """Overlaid density histograms on shared bins; integer-valued data (e.g. 1-5 stars) gets one bin per value."""
    both = np.concatenate([real, simulated])
    if both.size == 0:
        return None
    low, high = float(both.min()), float(both.max())
    if np.all(both == np.round(both)) and high - low <= 50:
        bins = np.arange(low - 0.5, high + 1.5)
    else:
        bins = np.histogram_bin_edges(both, bins="auto")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for values, label, color in ((real, "real", "C0"), (simulated, "simulated", "C1")):
        if values.size:
            ax.hist(values, bins=bins, density=True, alpha=0.5, color=color, label=f"{label} (n = {values.size:,})")
    ax.set(xlabel=name, ylabel="density", title=f"Distribution of {name}: real vs simulated")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _lorenz_figure(name: str, real: np.ndarray, simulated: np.ndarray) -> Figure | None:
    """Lorenz curves of the counts: share of interactions held by the least popular share of items."""
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--", label="equality")
    drawn = False
    for values, label, color in ((real, "real", "C0"), (simulated, "simulated", "C1")):
        counts = np.sort(values[values >= 0])
        if counts.size == 0 or counts.sum() == 0:
            continue
        x = np.linspace(0.0, 1.0, counts.size + 1)
        y = np.r_[0.0, np.cumsum(counts) / counts.sum()]
        ax.plot(x, y, color=color, label=label)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(
        xlabel="share of items (least popular first)",
        ylabel="share of interactions",
        title=f"Lorenz curves of {name}",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return fig


def write_plots(plots: dict[str, tuple[np.ndarray, np.ndarray]], folder: Path) -> list[Image]:
    """One PNG per pair of ``plots`` with data: Lorenz curves for ``popularity``, overlaid histograms otherwise."""
    images = []
    for name, (real, simulated) in plots.items():
        real_values, sim_values = _finite_values(real), _finite_values(simulated)
        if name == "popularity":
            fig = _lorenz_figure("item counts", real_values, sim_values)
            caption = "Lorenz curves of the interactions per item, with the line of equality (Gini 0)."
        else:
            fig = _histogram_figure(name, real_values, sim_values)
            caption = f"Distribution of {name} in the real and the simulated log."
        if fig is None:
            continue
        path = folder / f"{safe_name(name)}.png"
        try:
            fig.savefig(path, dpi=100, bbox_inches="tight")
        finally:
            plt.close(fig)
        images.append(Image(path, caption))
    return images


# ---------------------------------------------------------------------------------------------------------------------
# Report


def targets_section(fidelity: dict[str, Any]) -> Section:
    found = targets(fidelity)
    if not found:
        return Section("Targets", [Paragraph("No calibration target has numbers in this report.")])
    evaluated = [target for target in found if target.met is not None]
    met = sum(bool(target.met) for target in evaluated)
    summary = Paragraph(f"{met} of {len(evaluated)} evaluated targets met.", warning=met < len(evaluated))
    return Section("Targets", [summary, Bullets([target.line for target in found])])


def write_fidelity_report(
    out_dir: Path,
    fidelity: dict[str, Any],
    plots: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    title: str = "Calibration fidelity",
) -> dict[str, Path]:
    """Writes ``out_dir/fidelity.md``, a self-contained ``out_dir/fidelity.html`` and one ``out_dir/<plot>.png`` each.

    Args:
        out_dir: Folder to write to (created if missing).
        fidelity: Fidelity numbers by name, e.g. from :func:`metarec.calibration.fidelity.compare`, optionally with
            ``recall@10_sim`` and ``recall@10_popularity``.
        plots: ``name -> (real values, simulated values)``: ``popularity`` takes the interactions per item of each
            log and is drawn as Lorenz curves; any other name (``rating``, ``engagement``) as overlaid histograms.
        title: Title of both documents.

    Returns:
        The paths by file name: ``fidelity.md``, ``fidelity.html`` and ``<plot>.png`` per plot drawn.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = write_plots(plots or {}, out_dir)
    number_blocks: list[Block] = list(number_tables(fidelity)) or [Paragraph("No numbers.")]
    sections = [targets_section(fidelity), Section("Numbers", number_blocks)]
    if images:
        sections.append(Section("Plots", list(images)))
    md_path, html_path = out_dir / "fidelity.md", out_dir / "fidelity.html"
    md_path.write_text(render_markdown(title, sections, out_dir), encoding="utf-8")
    html_path.write_text(render_html(title, sections), encoding="utf-8")
    return {"fidelity.md": md_path, "fidelity.html": html_path, **{image.path.name: image.path for image in images}}
