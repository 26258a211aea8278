"""The demo's report: ``runs/demo/report.md`` and a self-contained ``runs/demo/report.html``.

One document for the whole job: what was simulated, how each method adapts to new users of held-out
populations (curves with 95% intervals), the A/B test of the meta-learned recommender (table,
guardrails, effects over simulated days) and a conclusion generated from the numbers. It is built
from the document model and renderers of :mod:`metarec.reporting`, as the A/B report is, so both
read and look alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metarec.abtest import report as ab
from metarec.meta.evaluate import BASELINES
from metarec.reporting import Block, Image, Paragraph, Section, Table, fmt, fmt_ci, render_html, render_markdown

SESSIONS_SHOWN = (1, 2, 5, 10, 20)
PAIRED_UP_TO = 10  # the sessions the demo's conclusion reads the paired leads in


def _curve_cell(curve: dict[str, Any], k: int) -> str:
    value, ci = curve["normalised_return"][k - 1], curve["ci95"][k - 1]
    return f"{fmt(value)} {fmt_ci(ci)}" if value is not None else "n/a"


def adaptation_sections(meta: dict[str, Any], meta_dir: Path) -> list[Section]:
    """The held-out test split's curves, then each other held-out split's (a new drift regime, a new
    catalogue domain) with the best meta-learner's paired leads."""
    sections = [adaptation_section(meta["adaptation"], meta_dir, "test")]
    for split, adaptation in (meta.get("other_splits") or {}).items():
        section = adaptation_section(adaptation, meta_dir, split, f"Adaptation on {split}")
        section.blocks.extend(adaptation_conclusion({"adaptation": adaptation}, on=split))
        sections.append(section)
    return sections


def adaptation_section(
    adaptation: dict[str, Any], meta_dir: Path, split: str, title: str = "Adaptation to new users"
) -> Section:
    shown = [k for k in SESSIONS_SHOWN if k <= len(adaptation["sessions"])]
    rows = [
        [name, *(_curve_cell(curve, k) for k in shown)]
        for name, curve in adaptation["methods"].items()
        if name not in ("random", "oracle")
    ]
    blocks: list[Block] = [
        Paragraph(
            f"New users of {adaptation.get('seeds', '?')} independent draws of held-out populations "
            f"({adaptation['split']}); the return of each session is normalised so that random slates score 0 "
            "and the oracle, who sees every user's true interests, scores 1. Mean and 95% interval over seeds."
        ),
        Table(["method", *(f"session {k}" for k in shown)], rows),
    ]
    plot = meta_dir / f"adaptation_{split}.png"
    if plot.is_file():
        blocks.append(Image(plot, f"Normalised return per session on {adaptation['split']}, with 95% intervals."))
    return Section(title, blocks)


def adaptation_conclusion(meta: dict[str, Any], on: str | None = None) -> list[Paragraph]:
    """What the adaptation curves say: the best meta-learner's first sessions and the baselines it is ahead
    of. Nothing to say without a meta-learner (a meta config of baselines only: ``best_meta_method`` is
    None) or a curve; a missing value (None: the oracle did no better than random) is shown as missing and
    compared with nothing."""
    adaptation = meta["adaptation"]
    named = adaptation.get("meta_learner")  # named in the config before evaluation, else the best of the runs
    best = named or adaptation.get("best_meta_method")
    methods = adaptation.get("methods") or {}
    if best is None or best not in methods or not methods[best].get("normalised_return"):
        return [Paragraph("No meta-learner was evaluated, so there is no best meta-learner to report.")]
    curve = methods[best]["normalised_return"]
    lines = [
        f"The {'meta-learner named in the config' if named else 'best meta-learner'}"
        f"{'' if on is None else ' on ' + on} "
        f"is {best}: {fmt(curve[0])} of the way "
        f"from random to the oracle in a new user's first session, "
        f"{fmt(curve[min(4, len(curve) - 1)])} by session {min(5, len(curve))}."
    ]
    first = {
        name: methods[name]["normalised_return"][0]
        for name in BASELINES
        if name in methods and methods[name].get("normalised_return")
    }
    beaten = (
        []
        if curve[0] is None
        else [f"{name} ({fmt(value)})" for name, value in first.items() if value is not None and value < curve[0]]
    )
    if beaten:
        lines.append(f"In the first session it is ahead of {', '.join(beaten)}.")
    paired = (adaptation.get("paired") or {}).get("against") or {}
    up_to = min(PAIRED_UP_TO, len(curve))
    leads = [f"{name} in {session_ranges(_ahead_in(lead, up_to))}" for name, lead in paired.items()]
    if leads:
        lines.append(
            f"Paired by seed (both meet the same users), its lead's per-session 95% interval is above 0, within "
            f"the first {up_to} sessions, against {'; '.join(leads)}."
        )
    return [Paragraph(line) for line in lines]


def _ahead_in(lead: dict[str, Any], up_to: int) -> list[int]:
    """The sessions (1-based, at most ``up_to``) where the lead's interval lies above 0."""
    return [k + 1 for k, (low, _) in enumerate(lead["ci95"][:up_to]) if low is not None and low > 0]


def session_ranges(sessions: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"sessions 1-3 and 5"``; ``[]`` -> ``"no session"``."""
    if not sessions:
        return "no session"
    runs: list[list[int]] = []
    for k in sessions:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    parts = [f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs]
    words = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"session{'s' if len(sessions) > 1 else ''} {words}"


def simulated_section(rows: list[dict[str, Any]], users: int) -> Section:
    table = Table(
        ["environment", "random", "oracle"],
        [
            [row["env"], f"{fmt(row['random']['mean_return'])}", f"{fmt(row['oracle']['mean_return'])}"]
            for row in rows
        ],
    )
    return Section(
        "What was simulated",
        [
            Paragraph(
                f"Users whose interests drift (by what they consume, a random walk, abrupt shifts and population "
                f"trends) and who tire of topics, shown slates by a recommender. Mean return of {users} fresh users "
                "per environment under random slates and under the oracle:"
            ),
            table,
        ],
    )


def write_demo_report(out: Path, summary: dict[str, Any]) -> dict[str, Path]:
    """Writes ``out/report.md`` and ``out/report.html`` from the demo's summary and its runs' files."""
    out = Path(out)
    sections = [simulated_section(summary["results"], summary["users"])]
    conclusion: list[Paragraph] = []
    if summary.get("meta"):
        sections.extend(adaptation_sections(summary["meta"], out / "meta"))
        conclusion += adaptation_conclusion(summary["meta"])
    ab_results_path = out / "abtest" / "results.json"
    if ab_results_path.is_file():
        results = json.loads(ab_results_path.read_text())
        plots = out / "abtest" / "plots"
        images = {
            path.stem: Image(
                path, f"Effect on {path.stem.removeprefix('daily_effect_')} by simulated day, with intervals."
            )
            for path in sorted(plots.glob("daily_effect_*.png"))
        }
        if (plots / "effects.png").is_file():
            images["effects"] = Image(plots / "effects.png", "Relative effects of each arm with their intervals.")
        sections += [
            Section(
                "A/B test",
                [
                    Paragraph(ab.srm_line(results)),
                    ab.results_table(results),
                    *(list(images.values())),
                    Paragraph(f"Full report: {ab_results_path.parent / 'report.html'}"),
                ],
            ),
            ab.guardrails_section(results),
        ]
        conclusion += list(ab.conclusion(results))
    sections.append(Section("Conclusion", conclusion))
    title = "metarec demo: recommenders that adapt to users whose preferences drift"
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(render_markdown(title, sections, out), encoding="utf-8")
    html_path.write_text(render_html(title, sections), encoding="utf-8")
    return {"report.md": md_path, "report.html": html_path}
