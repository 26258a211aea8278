"""The plots of an A/B test report, drawn with matplotlib from the results dict and saved as PNG.

* the daily mean of the primary metric per arm;
* the daily effect of each treatment on the primary metric with its interval;
* a forest plot of the relative effects on every metric;
* the daily z statistic of each treatment against its group-sequential bounds.

A plot without data is skipped. Every arm has the same colour in every plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from metarec.abtest.report_data import arm_effect, ci_level, metric_order, treatment_arms
from metarec.reporting import Image, number, safe_name

__all__ = ["PlotSpec", "plot_specs", "write_plots"]


def _floats(values: Any) -> np.ndarray:
    """A list of numbers as floats for plotting: None and infinities become NaN (not drawn)."""
    array = np.array([np.nan if number(v) is None else float(v) for v in (values or [])], dtype=float)
    array[~np.isfinite(array)] = np.nan
    return array


def _label(text: str) -> str:
    """``text`` shown literally by matplotlib: no mathtext from ``$``, not hidden from legends by a leading ``_``."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _color(results: dict[str, Any], arm: str) -> str:
    """The same colour for an arm in every plot: its position in ``results["arms"]`` in the colour cycle."""
    arms = list(results["arms"])
    return f"C{arms.index(arm) % 10}" if arm in arms else "gray"


def _per_day(results: dict[str, Any]) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """``(days, per-arm series, per-treatment effect series)`` from ``results["per_day"]``."""
    per_day = results.get("per_day") or {}
    return list(per_day.get("days") or []), per_day.get("arms") or {}, per_day.get("effects") or {}


def _aligned(days: list[Any], values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Days and values as float arrays cut to the same length."""
    x, y = _floats(days), _floats(values)
    n = min(x.size, y.size)
    return x[:n], y[:n]


def _daily_figure(results: dict[str, Any]) -> Figure | None:
    """The daily mean of the primary metric, one line per arm."""
    primary = results["primary_metric"]
    days, arms, _ = _per_day(results)
    series = {arm: metrics[primary] for arm, metrics in arms.items() if primary in metrics}
    if not days or not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm, values in series.items():
        ax.plot(*_aligned(days, values), marker="o", markersize=3, color=_color(results, arm), label=_label(arm))
    ax.set(xlabel="day", ylabel=_label(primary), title=_label(f"Daily mean of {primary}"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _daily_effect_figure(results: dict[str, Any]) -> Figure | None:
    """The daily absolute effect of each treatment on the primary metric with its CI band and a zero line."""
    primary = results["primary_metric"]
    days, _, effects = _per_day(results)
    series = {arm: metrics[primary] for arm, metrics in effects.items() if primary in metrics}
    if not days or not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.axhline(0.0, color="black", linewidth=0.8)
    for arm, effect in series.items():
        x, y = _aligned(days, effect.get("absolute"))
        low, high = _aligned(days, effect.get("ci_low"))[1], _aligned(days, effect.get("ci_high"))[1]
        n = min(x.size, low.size, high.size)
        ax.plot(x, y, marker="o", markersize=3, color=_color(results, arm), label=_label(arm))
        ax.fill_between(x[:n], low[:n], high[:n], color=_color(results, arm), alpha=0.2, linewidth=0)
    ax.set(
        xlabel="day",
        ylabel=_label(f"{primary}: treatment - control"),
        title=_label(f"Daily effect on {primary} vs {results['control']} ({ci_level(results)} CI)"),
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _forest_figure(results: dict[str, Any]) -> Figure | None:
    """Relative effect with its relative CI per metric, one marker per treatment (filled: significant)."""
    metrics, treatments = metric_order(results), treatment_arms(results)
    if not metrics or not treatments:
        return None
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.6 * len(metrics) * max(1, len(treatments)) ** 0.5))
    ax.axvline(0.0, color="black", linewidth=0.8)
    step = 0.6 / max(1, len(treatments))
    for i, arm in enumerate(treatments):
        color, label = _color(results, arm), _label(arm)
        for row, metric in enumerate(metrics):
            effect = arm_effect(results, arm, metric) or {}
            relative = number(effect.get("relative"))
            if relative is None or math.isinf(relative):
                continue
            y = row + (i - (len(treatments) - 1) / 2) * step
            low, high = _floats([*(effect.get("relative_ci") or []), None, None][:2])
            if np.isfinite(low) and np.isfinite(high):
                ax.hlines(y, 100 * low, 100 * high, color=color, linewidth=1.5)
            face = color if effect.get("significant") else "white"
            ax.plot(100 * relative, y, "o", color=color, markerfacecolor=face, label=label)
            label = None  # one legend entry per treatment
    ax.set_yticks(range(len(metrics)), [_label(metric) for metric in metrics])
    ax.invert_yaxis()
    ax.set(
        xlabel=f"relative effect vs {_label(results['control'])} (%)",
        title=f"Relative effects with {ci_level(results)} CI (filled: significant after correction)",
    )
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels)
    return fig


def _sequential_figure(results: dict[str, Any]) -> Figure | None:
    """For each treatment, the daily z statistic against the +- group-sequential bounds."""
    sequential = results.get("sequential") or {}
    if not sequential:
        return None
    days, _, _ = _per_day(results)
    fig, axes = plt.subplots(len(sequential), 1, figsize=(8, 0.6 + 2.8 * len(sequential)), sharex=True, squeeze=False)
    for ax, (arm, monitor) in zip(axes[:, 0], sequential.items(), strict=True):
        z, bounds = _floats(monitor.get("z")), _floats(monitor.get("bounds"))
        x = _floats(days)[: z.size] if len(days) >= z.size else np.arange(1, z.size + 1, dtype=float)
        n = min(x.size, bounds.size)
        ax.plot(x, z, marker="o", markersize=3, color="C0", label="z")
        ax.plot(x[:n], bounds[:n], "--", color="C3", label="bound")
        ax.plot(x[:n], -bounds[:n], "--", color="C3")
        if monitor.get("crossed_day") is not None:
            ax.axvline(float(monitor["crossed_day"]), color="C2", linestyle=":", label="crossed")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set(ylabel="z", title=_label(f"{arm}: {monitor.get('metric', results['primary_metric'])}"))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    axes[-1, 0].set_xlabel("day")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class PlotSpec:
    """A plot of the report: its key, file stem, caption and the function that draws it (None: skip)."""

    key: str
    stem: str
    caption: str
    draw: Callable[[dict[str, Any]], Figure | None]


def plot_specs(results: dict[str, Any]) -> list[PlotSpec]:
    """The plots of the report, in the order they appear."""
    primary, control, level = results["primary_metric"], results["control"], ci_level(results)
    return [
        PlotSpec("daily", f"daily_{primary}", f"Daily mean of {primary} per arm.", _daily_figure),
        PlotSpec(
            "daily_effect",
            f"daily_effect_{primary}",
            f"Daily absolute effect on {primary} of each treatment vs {control}, with its {level} CI.",
            _daily_effect_figure,
        ),
        PlotSpec(
            "effects", "effects", f"Relative effect on every metric vs {control}, with its {level} CI.", _forest_figure
        ),
        PlotSpec(
            "sequential",
            "sequential",
            "Daily z statistic of the primary metric against the group-sequential bounds.",
            _sequential_figure,
        ),
    ]


def write_plots(results: dict[str, Any], folder: Path) -> dict[str, Image]:
    """Draws every plot that has data into ``folder`` as PNG; returns the images by plot key."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for spec in plot_specs(results):
        fig = spec.draw(results)
        if fig is None:
            continue
        path = folder / f"{safe_name(spec.stem)}.png"
        try:
            fig.savefig(path, dpi=100, bbox_inches="tight")
        finally:
            plt.close(fig)
        images[spec.key] = Image(path, spec.caption)
    return images
