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

Both documents are rendered from one list of :class:`~metarec.reporting.Section` (paragraphs, bullet lists,
tables, images) by :mod:`metarec.reporting`, so they always say the same; the HTML has inline CSS, embeds the plots
(drawn by :mod:`metarec.abtest.report_plots`) as ``data:image/png`` URIs and needs neither the network nor
JavaScript. :func:`summary_table` renders the same results table, the SRM line and the guardrail line as plain text
for the terminal. Numbers go through :func:`fmt` (4 significant digits), :func:`fmt_p` and :func:`fmt_pct`; missing
or NaN values print as "—" and infinities never crash formatting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metarec.abtest.report_data import (
    arm_effect,
    arm_value,
    ci_level,
    correction_phrase,
    guardrail_items,
    higher_is_better,
    metric_order,
    srm_flagged,
    treatment_arms,
)
from metarec.abtest.report_plots import write_plots
from metarec.reporting import (
    MISSING,
    Block,
    Bullets,
    Image,
    Paragraph,
    Section,
    Table,
    fmt,
    fmt_ci,
    fmt_count,
    fmt_p,
    fmt_pct,
    number,
    p_phrase,
    render_html,
    render_markdown,
    render_text_table,
)

__all__ = ["fmt", "fmt_ci", "fmt_p", "fmt_pct", "summary_table", "write_report"]

SIGNIFICANT_MARK = "*"


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
        f"{ci_level(results)} CI",
        "lift",
        "p (adj.)",
        "sig.",
    ]
    rows = []
    for metric in metric_order(results):
        for arm in treatment_arms(results):
            effect = arm_effect(results, arm, metric)
            if effect is None:
                continue
            control, treatment = arm_value(results, results["control"], metric), arm_value(results, arm, metric)
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
        for arm, metric, guard in guardrail_items(results)
    ]
    return Table(["arm", "metric", "status", "max. drop", f"{ci_level(results)} CI (relative)"], rows, label_columns=3)


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
        f"Sample-ratio mismatch (SRM) check: {p_phrase(srm.get('p_value'))} (users: {split}; "
        f"expected shares {expected or MISSING}): {verdict}."
    )


def guardrail_line(results: dict[str, Any]) -> str:
    """The guardrails in one sentence: how many failed, were inconclusive or passed, and which."""
    guards = guardrail_items(results)
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


def summary_table(results: dict[str, Any]) -> str:
    """The results table, the SRM line and the guardrail line as plain text for the terminal."""
    return "\n".join([render_text_table(results_table(results)), "", srm_line(results), guardrail_line(results)])


# ---------------------------------------------------------------------------------------------------------------------
# Conclusion


def _primary_sentence(results: dict[str, Any], arm: str) -> str:
    """Whether ``arm`` changed the primary metric significantly after correction, and by how much."""
    primary, control = results["primary_metric"], results["control"]
    effect = arm_effect(results, arm, primary)
    if effect is None:
        return f"{arm}: there is no estimate of the effect on {primary}."
    relative = number(effect.get("relative"))
    numbers = (
        f"{ci_level(results)} CI {fmt_ci(effect.get('relative_ci'), fmt_pct)}, "
        f"adjusted {p_phrase(effect.get('p_adjusted'))}"
    )
    if not effect.get("significant"):
        return (
            f"{arm} did not change {primary} significantly compared with {control} "
            f"{correction_phrase(results)} (lift {fmt_pct(relative)}, {numbers})."
        )
    sign = relative if relative is not None else number(effect.get("absolute"))
    if sign is None or sign == 0:
        return (
            f"{arm} changed {primary} significantly compared with {control} {correction_phrase(results)} ({numbers})."
        )
    direction = "increased" if sign > 0 else "decreased"
    verdict = "an improvement" if (sign > 0) == higher_is_better(results, primary) else "a deterioration"
    size = f" by {fmt_pct(abs(relative), signed=False)}" if relative is not None else ""
    return (
        f"{arm} {direction} {primary}{size} compared with {control}, significant "
        f"{correction_phrase(results)} ({numbers}): {verdict}."
    )


def _guardrail_sentence(results: dict[str, Any], arm: str) -> str:
    """Which guardrails of ``arm`` failed or were inconclusive; empty when it has none."""
    guards = [(metric, guard.get("status")) for name, metric, guard in guardrail_items(results) if name == arm]
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
    if srm_flagged(results):
        p = p_phrase((results.get("srm") or {}).get("p_value"))
        paragraphs.append(
            Paragraph(
                f"Warning: the sample-ratio mismatch check flagged ({p}): users were not split between the arms as "
                "designed, so the results are not trustworthy until the cause is found.",
                warning=True,
            )
        )
    for arm in treatment_arms(results):
        text = " ".join(s for s in (_primary_sentence(results, arm), _guardrail_sentence(results, arm)) if s)
        paragraphs.append(Paragraph(text))
    return paragraphs


# ---------------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------------
# Sections


def unit_line(results: dict[str, Any]) -> str:
    """What the intervals treat as independent: users, or replicates of the whole test (and why)."""
    replicates = results.get("replicates", 1)
    if replicates == 1:
        return "Unit of analysis: the user (every arm's recommender keeps its state per user)"
    sharing = results.get("shared_state_arms") or []
    why = "replicates were asked for"
    if sharing:
        why = f"{', '.join(sharing)} learn(s) one model from all users, so users are not independent samples"
    return (
        f"Unit of analysis: the replicate ({replicates} independent copies of the test, each with its own users "
        f"and learners, every arm serving all its users; t intervals on {replicates - 1} degrees of freedom): {why}"
    )


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
        unit_line(results),
    ]
    if number(results.get("wall_seconds")) is not None:
        items.append(f"Wall time: {fmt(results['wall_seconds'])} s")
    blocks: list[Block] = [Bullets(items)]
    if results.get("metrics"):
        blocks.append(metrics_table(results))
    return Section("Design", blocks)


def results_section(results: dict[str, Any]) -> Section:
    cuped = sorted(
        {
            f"{arm}: {metric}"
            for arm in treatment_arms(results)
            for metric in metric_order(results)
            if (arm_effect(results, arm, metric) or {}).get("cuped")
        }
    )
    note = (
        f"A {SIGNIFICANT_MARK} marks an effect significant at alpha = {results.get('alpha', MISSING)} "
        f"{correction_phrase(results)}. Lift is the relative effect vs {results['control']}."
    )
    if cuped:
        note += f" CUPED-adjusted with the pre-period: {', '.join(cuped)}."
    blocks: list[Block] = [
        results_table(results),
        Paragraph(note),
        Paragraph(srm_line(results), warning=srm_flagged(results)),
    ]
    coverage = results.get("coverage") or {}
    if coverage:
        shares = ", ".join(f"{arm} {fmt_pct(share, signed=False)}" for arm, share in coverage.items())
        blocks.append(Paragraph(f"Catalogue coverage (share of items shown at least once): {shares}."))
    return Section("Results", blocks)


def guardrails_section(results: dict[str, Any]) -> Section:
    blocks: list[Block] = [Paragraph(guardrail_line(results))]
    if guardrail_items(results):
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
