"""The report of a simulated A/B test: ``report.md``, a self-contained ``report.html`` and PNG plots.

:func:`write_report` turns the results dict of an A/B test (the content of ``results.json``) into a report with

* **Design** -- how the test ran: design (paired or independent users), users per arm, days, pre-period days,
  seed, config hash, control arm, primary metric, alpha, multiple-testing correction, and the metrics measured;
* **Results** -- one row per treatment arm and metric: control and treatment values, absolute effect with its
  confidence interval, relative lift, corrected p-value and a significance mark; then the sample-ratio-mismatch
  (SRM) check and the catalogue coverage of each arm;
* **Guardrails** -- pass / fail / inconclusive per treatment and guardrail metric;
* **Effects over time** -- plots of the daily mean of the primary metric per arm, of the daily effect of each
  treatment with its interval, and a forest plot of the relative effects on every metric;
* **Sequential monitoring** -- the day each treatment crossed its group-sequential bound (or "not crossed"), and
  a plot of the daily z statistic against the bounds;
* **Conclusion** -- a short paragraph generated from the numbers, with a warning first when the SRM check flagged.

Both documents are rendered from one list of :class:`Section` (paragraphs, bullet lists, tables, images), so they
always say the same; the HTML has inline CSS, embeds the plots as ``data:image/png`` URIs and needs neither the
network nor JavaScript. :func:`summary_table` renders the same results table, the SRM line and the guardrail line as
plain text for the terminal. Numbers go through :func:`fmt` (4 significant digits), :func:`fmt_p` and
:func:`fmt_pct`; missing or NaN values print as "—" and infinities never crash formatting.
"""

from __future__ import annotations

import base64
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["fmt", "fmt_ci", "fmt_p", "fmt_pct", "summary_table", "write_report"]

MISSING = "—"
SIGNIFICANT_MARK = "*"

# ---------------------------------------------------------------------------------------------------------------------
# Number formatting


def _number(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing, NaN or not a number."""
    if x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def fmt(x: Any) -> str:
    """A value with 4 significant digits; "—" when missing or NaN, "∞" / "-∞" when infinite."""
    value = _number(x)
    if value is None:
        return MISSING
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.4g}"


def fmt_p(p: Any) -> str:
    """A p-value with 4 decimals (``0.0123``), ``<1e-4`` below 1e-4, "—" when missing."""
    value = _number(p)
    if value is None:
        return MISSING
    return "<1e-4" if value < 1e-4 else f"{value:.4f}"


def fmt_pct(x: Any, signed: bool = True) -> str:
    """A fraction as a percentage with 2 decimals (0.015 -> ``+1.50%``), "—" when missing."""
    value = _number(x)
    if value is None:
        return MISSING
    return f"{100 * value:+.2f}%" if signed else f"{100 * value:.2f}%"


def fmt_ci(ci: Any, formatter: Callable[[Any], str] = fmt) -> str:
    """An interval ``[low, high]`` with each end through ``formatter``; "—" when there is no interval."""
    if not isinstance(ci, Sequence) or isinstance(ci, str) or len(ci) != 2:
        return MISSING
    if _number(ci[0]) is None and _number(ci[1]) is None:
        return MISSING
    return f"[{formatter(ci[0])}, {formatter(ci[1])}]"


def fmt_count(n: Any) -> str:
    """A count with thousands separators (``100,000``), "—" when missing or not finite."""
    value = _number(n)
    return f"{value:,.0f}" if value is not None and math.isfinite(value) else MISSING


def _p_phrase(p: Any) -> str:
    """``p = 0.0123`` or ``p <1e-4`` for running text."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def safe_name(name: str) -> str:
    """``name`` usable as a file name: every character outside ``[A-Za-z0-9_.-]`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the results dict


def _treatments(results: dict[str, Any]) -> list[str]:
    """Every arm except the control, in the order of ``results["arms"]``."""
    return [arm for arm in results["arms"] if arm != results["control"]]


def _metric_order(results: dict[str, Any]) -> list[str]:
    """The metrics with an effect: the primary first, then the order of ``results["metrics"]``."""
    measured = [metric for effects in (results.get("effects") or {}).values() for metric in effects]
    names = [metric for metric in results.get("metrics") or {} if metric in measured]
    names += [metric for metric in dict.fromkeys(measured) if metric not in names]
    primary = results.get("primary_metric")
    return sorted(names, key=lambda metric: metric != primary)  # stable: the primary moves to the front


def _effect(results: dict[str, Any], arm: str, metric: str) -> dict[str, Any] | None:
    """The effect of ``arm`` on ``metric`` versus the control, or None."""
    return ((results.get("effects") or {}).get(arm) or {}).get(metric)


def _arm_value(results: dict[str, Any], arm: str, metric: str) -> Any:
    """The value of ``metric`` in ``arm`` over the whole test, or None."""
    return ((results["arms"].get(arm) or {}).get("metrics") or {}).get(metric)


def _higher_is_better(results: dict[str, Any], metric: str) -> bool:
    return bool(((results.get("metrics") or {}).get(metric) or {}).get("higher_is_better", True))


def _guardrails(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(arm, metric, guardrail)`` for every guardrail of every treatment."""
    return [
        (arm, metric, guard)
        for arm, per_metric in (results.get("guardrails") or {}).items()
        for metric, guard in per_metric.items()
    ]


def _ci_level(results: dict[str, Any]) -> str:
    """``95%`` for alpha = 0.05."""
    alpha = _number(results.get("alpha"))
    return f"{100 * (1 - alpha):g}%" if alpha is not None else "(1 - alpha)"


def _correction_phrase(results: dict[str, Any]) -> str:
    correction = results.get("correction")
    return "without multiple-testing correction" if correction in (None, "none") else f"after {correction} correction"


def _srm_flagged(results: dict[str, Any]) -> bool:
    return bool((results.get("srm") or {}).get("flagged"))


def _floats(values: Any) -> np.ndarray:
    """A list of numbers as floats for plotting: None and infinities become NaN (not drawn)."""
    array = np.array([np.nan if _number(v) is None else float(v) for v in (values or [])], dtype=float)
    array[~np.isfinite(array)] = np.nan
    return array


# ---------------------------------------------------------------------------------------------------------------------
# Document model: one list of sections, rendered as Markdown, HTML and (tables only) plain text


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


# ---------------------------------------------------------------------------------------------------------------------
# Tables and lines


def results_table(results: dict[str, Any]) -> Table:
    """One row per (metric, treatment arm): values, absolute effect and CI, lift, adjusted p, significance."""
    header = [
        "metric",
        "arm",
        "control",
        "treatment",
        "abs. effect",
        f"{_ci_level(results)} CI",
        "lift",
        "p (adj.)",
        "sig.",
    ]
    rows = []
    for metric in _metric_order(results):
        for arm in _treatments(results):
            effect = _effect(results, arm, metric)
            if effect is None:
                continue
            control, treatment = _arm_value(results, results["control"], metric), _arm_value(results, arm, metric)
            rows.append(
                [
                    metric,
                    arm,
                    fmt(control),
                    fmt(treatment),
                    fmt(effect.get("absolute")),
                    fmt_ci(effect.get("ci")),
                    fmt_pct(effect.get("relative")),
                    fmt_p(effect.get("p_adjusted")),
                    SIGNIFICANT_MARK if effect.get("significant") else "",
                ]
            )
    return Table(header, rows, label_columns=2)


def guardrail_table(results: dict[str, Any]) -> Table:
    """One row per (treatment, guardrail metric): status, largest drop allowed, relative CI."""
    rows = [
        [
            arm,
            metric,
            str(guard.get("status", MISSING)),
            fmt_pct(guard.get("max_drop"), signed=False),
            fmt_ci(guard.get("relative_ci"), fmt_pct),
        ]
        for arm, metric, guard in _guardrails(results)
    ]
    return Table(["arm", "metric", "status", "max. drop", f"{_ci_level(results)} CI (relative)"], rows, label_columns=3)


def sequential_table(results: dict[str, Any]) -> Table:
    """One row per monitored treatment: the day it crossed its bound (or "not crossed") and the last look."""
    rows = []
    for arm, monitor in (results.get("sequential") or {}).items():
        crossed = monitor.get("crossed_day")
        z, bounds = list(monitor.get("z") or []), list(monitor.get("bounds") or [])
        low, high = list(monitor.get("ci_low") or []), list(monitor.get("ci_high") or [])
        rows.append(
            [
                arm,
                str(monitor.get("metric", MISSING)),
                "not crossed" if crossed is None else f"day {crossed}",
                fmt(z[-1] if z else None),
                fmt(bounds[-1] if bounds else None),
                fmt_ci([low[-1], high[-1]] if low and high else None),
            ]
        )
    header = ["arm", "metric", "crossed", "last z", "last bound", "repeated CI, last day"]
    return Table(header, rows, label_columns=3)


def metrics_table(results: dict[str, Any]) -> Table:
    """The metrics measured: kind, direction, description."""
    rows = [
        [
            name,
            str(spec.get("kind", MISSING)),
            "yes" if spec.get("higher_is_better", True) else "no",
            str(spec.get("description", "")),
        ]
        for name, spec in (results.get("metrics") or {}).items()
    ]
    return Table(["metric", "kind", "higher is better", "description"], rows, label_columns=4)


def srm_line(results: dict[str, Any]) -> str:
    """The sample-ratio-mismatch check in one sentence."""
    srm = results.get("srm") or {}
    if not srm:
        return "Sample-ratio mismatch (SRM) check: not run."
    counts, shares, arms = list(srm.get("counts") or []), list(srm.get("expected_shares") or []), list(results["arms"])
    names = arms if len(arms) == len(counts) else [f"arm {i + 1}" for i in range(len(counts))]
    split = ", ".join(f"{name} {fmt_count(n)}" for name, n in zip(names, counts, strict=True))
    expected = " / ".join(fmt_pct(share, signed=False) for share in shares)
    verdict = "FLAGGED: the users are not split between the arms as designed" if srm.get("flagged") else "no mismatch"
    return (
        f"Sample-ratio mismatch (SRM) check: {_p_phrase(srm.get('p_value'))} (users: {split}; "
        f"expected shares {expected or MISSING}): {verdict}."
    )


def guardrail_line(results: dict[str, Any]) -> str:
    """The guardrails in one sentence: how many failed, were inconclusive or passed, and which."""
    guards = _guardrails(results)
    if not guards:
        return "Guardrails: none configured."
    parts = []
    for status in ("fail", "inconclusive", "pass"):
        hits = [f"{arm}: {metric}" for arm, metric, guard in guards if guard.get("status") == status]
        if hits:
            parts.append(f"{len(hits)} {status}" + ("" if status == "pass" else f" ({', '.join(hits)})"))
    others = len(guards) - sum(guard.get("status") in ("fail", "inconclusive", "pass") for _, _, guard in guards)
    if others:
        parts.append(f"{others} with unknown status")
    return "Guardrails: " + ", ".join(parts) + "."


def _text_table(table: Table) -> str:
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


def summary_table(results: dict[str, Any]) -> str:
    """The results table, the SRM line and the guardrail line as plain text for the terminal."""
    return "\n".join([_text_table(results_table(results)), "", srm_line(results), guardrail_line(results)])


# ---------------------------------------------------------------------------------------------------------------------
# Conclusion


def _primary_sentence(results: dict[str, Any], arm: str) -> str:
    """Whether ``arm`` changed the primary metric significantly after correction, and by how much."""
    primary, control = results["primary_metric"], results["control"]
    effect = _effect(results, arm, primary)
    if effect is None:
        return f"{arm}: there is no estimate of the effect on {primary}."
    relative = _number(effect.get("relative"))
    numbers = (
        f"{_ci_level(results)} CI {fmt_ci(effect.get('relative_ci'), fmt_pct)}, "
        f"adjusted {_p_phrase(effect.get('p_adjusted'))}"
    )
    if not effect.get("significant"):
        return (
            f"{arm} did not change {primary} significantly compared with {control} "
            f"{_correction_phrase(results)} (lift {fmt_pct(relative)}, {numbers})."
        )
    sign = relative if relative is not None else _number(effect.get("absolute"))
    if sign is None or sign == 0:
        return (
            f"{arm} changed {primary} significantly compared with {control} {_correction_phrase(results)} ({numbers})."
        )
    direction = "increased" if sign > 0 else "decreased"
    verdict = "an improvement" if (sign > 0) == _higher_is_better(results, primary) else "a deterioration"
    size = f" by {fmt_pct(abs(relative), signed=False)}" if relative is not None else ""
    return (
        f"{arm} {direction} {primary}{size} compared with {control}, significant "
        f"{_correction_phrase(results)} ({numbers}): {verdict}."
    )


def _guardrail_sentence(results: dict[str, Any], arm: str) -> str:
    """Which guardrails of ``arm`` failed or were inconclusive; empty when it has none."""
    guards = [(metric, guard.get("status")) for name, metric, guard in _guardrails(results) if name == arm]
    if not guards:
        return ""
    failed = [metric for metric, status in guards if status == "fail"]
    unsure = [metric for metric, status in guards if status == "inconclusive"]
    if failed:
        text = f"Guardrail failed: {', '.join(failed)}."
    else:
        text = "No guardrail failed." if unsure else "All guardrails passed."
    return text + (f" Inconclusive: {', '.join(unsure)}." if unsure else "")


def conclusion(results: dict[str, Any]) -> list[Paragraph]:
    """A short plain-language verdict: an SRM warning if flagged, then one paragraph per treatment."""
    paragraphs = []
    if _srm_flagged(results):
        p = _p_phrase((results.get("srm") or {}).get("p_value"))
        paragraphs.append(
            Paragraph(
                f"Warning: the sample-ratio mismatch check flagged ({p}): users were not split between the arms as "
                "designed, so the results are not trustworthy until the cause is found.",
                warning=True,
            )
        )
    for arm in _treatments(results):
        text = " ".join(s for s in (_primary_sentence(results, arm), _guardrail_sentence(results, arm)) if s)
        paragraphs.append(Paragraph(text))
    return paragraphs


# ---------------------------------------------------------------------------------------------------------------------
# Plots


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
        title=_label(f"Daily effect on {primary} vs {results['control']} ({_ci_level(results)} CI)"),
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _forest_figure(results: dict[str, Any]) -> Figure | None:
    """Relative effect with its relative CI per metric, one marker per treatment (filled: significant)."""
    metrics, treatments = _metric_order(results), _treatments(results)
    if not metrics or not treatments:
        return None
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.6 * len(metrics) * max(1, len(treatments)) ** 0.5))
    ax.axvline(0.0, color="black", linewidth=0.8)
    step = 0.6 / max(1, len(treatments))
    for i, arm in enumerate(treatments):
        color, label = _color(results, arm), _label(arm)
        for row, metric in enumerate(metrics):
            effect = _effect(results, arm, metric) or {}
            relative = _number(effect.get("relative"))
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
        title=f"Relative effects with {_ci_level(results)} CI (filled: significant after correction)",
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
    primary, control, level = results["primary_metric"], results["control"], _ci_level(results)
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


# ---------------------------------------------------------------------------------------------------------------------
# Sections


def design_section(results: dict[str, Any]) -> Section:
    arms = results["arms"]
    users = "; ".join(
        f"{arm} {fmt_count(spec.get('users'))}" + (f" (agent {spec['agent']})" if spec.get("agent", arm) != arm else "")
        for arm, spec in arms.items()
    )
    primary = results["primary_metric"]
    description = ((results.get("metrics") or {}).get(primary) or {}).get("description")
    items = [
        f"Design: {results.get('design', MISSING)}",
        f"Users per arm: {users}",
        f"Days: {results.get('days', MISSING)}",
        f"Pre-period days: {results.get('pre_period_days', MISSING)}",
        f"Seed: {results.get('seed', MISSING)}",
        f"Config hash: {results.get('config_hash', MISSING)}",
        f"Control arm: {results['control']}",
        f"Primary metric: {primary}" + (f" ({description})" if description else ""),
        f"Alpha: {results.get('alpha', MISSING)}",
        f"Correction: {results.get('correction', MISSING)}",
    ]
    if _number(results.get("wall_seconds")) is not None:
        items.append(f"Wall time: {fmt(results['wall_seconds'])} s")
    blocks: list[Block] = [Bullets(items)]
    if results.get("metrics"):
        blocks.append(metrics_table(results))
    return Section("Design", blocks)


def results_section(results: dict[str, Any]) -> Section:
    cuped = sorted(
        {
            f"{arm}: {metric}"
            for arm in _treatments(results)
            for metric in _metric_order(results)
            if (_effect(results, arm, metric) or {}).get("cuped")
        }
    )
    note = (
        f"A {SIGNIFICANT_MARK} marks an effect significant at alpha = {results.get('alpha', MISSING)} "
        f"{_correction_phrase(results)}. Lift is the relative effect vs {results['control']}."
    )
    if cuped:
        note += f" CUPED-adjusted with the pre-period: {', '.join(cuped)}."
    blocks: list[Block] = [
        results_table(results),
        Paragraph(note),
        Paragraph(srm_line(results), warning=_srm_flagged(results)),
    ]
    coverage = results.get("coverage") or {}
    if coverage:
        shares = ", ".join(f"{arm} {fmt_pct(share, signed=False)}" for arm, share in coverage.items())
        blocks.append(Paragraph(f"Catalogue coverage (share of items shown at least once): {shares}."))
    return Section("Results", blocks)


def guardrails_section(results: dict[str, Any]) -> Section:
    blocks: list[Block] = [Paragraph(guardrail_line(results))]
    if _guardrails(results):
        blocks.append(guardrail_table(results))
    return Section("Guardrails", blocks)


def effects_section(images: dict[str, Image]) -> Section:
    blocks: list[Block] = [images[key] for key in ("daily", "daily_effect", "effects") if key in images]
    return Section("Effects over time", blocks or [Paragraph("No per-day data.")])


def sequential_section(results: dict[str, Any], images: dict[str, Image]) -> Section:
    sequential = results.get("sequential") or {}
    if not sequential:
        return Section("Sequential monitoring", [Paragraph("No sequential monitoring in this test.")])
    methods = sorted({str(monitor.get("method")) for monitor in sequential.values() if monitor.get("method")})
    blocks: list[Block] = [sequential_table(results)]
    if methods:
        blocks.insert(0, Paragraph(f"Method: {'; '.join(methods)}."))
    if "sequential" in images:
        blocks.append(images["sequential"])
    return Section("Sequential monitoring", blocks)


def build_sections(results: dict[str, Any], images: dict[str, Image]) -> list[Section]:
    """Every section of the report, in order."""
    return [
        design_section(results),
        results_section(results),
        guardrails_section(results),
        effects_section(images),
        sequential_section(results, images),
        Section("Conclusion", list(conclusion(results))),
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


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


def _html_table(table: Table) -> str:
    def cells(tag: str, row: list[str]) -> str:
        return "".join(
            f"<{tag}{'' if i < table.label_columns else NUMERIC}>{escape(cell)}</{tag}>" for i, cell in enumerate(row)
        )

    body = "\n".join(f"<tr>{cells('td', row)}</tr>" for row in table.rows)
    return f"<table>\n<thead><tr>{cells('th', table.header)}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


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
                f'<figure><img src="{_data_uri(block.path)}" alt="{caption}">'
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


def write_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Writes ``out/plots/*.png``, ``out/report.md`` and a self-contained ``out/report.html``.

    Returns the paths by file name: ``report.md``, ``report.html`` and one ``<plot>.png`` per plot drawn.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = write_plots(results, out / "plots")
    sections = build_sections(results, images)
    title = f"A/B test report: {results.get('name', 'unnamed')}"
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(render_markdown(title, sections, out), encoding="utf-8")
    html_path.write_text(render_html(title, sections), encoding="utf-8")
    plots = {image.path.name: image.path for image in images.values()}
    return {"report.md": md_path, "report.html": html_path, **plots}
