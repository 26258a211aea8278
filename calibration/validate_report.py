"""The report of ``metarec validate``: ``validation.md``, a self-contained ``validation.html`` and ``lifts.png``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from metarec.reporting import Bullets, Image, Paragraph, Section, Table, fmt, fmt_ci, render_html, render_markdown
from metarec.reporting.format import fmt_pct

SCORES = (
    ("ndcg", "real NDCG@k"),
    ("recall", "real recall@k"),
    ("sim_offline_ndcg", "simulated offline NDCG@k"),
    ("sim_ndcg", "simulated slates NDCG@k"),
    ("sim_hit_rate", "simulated hit rate"),
    ("sim_engagement", "simulated engagement"),
)
ORDER = {True: "all in the same order", False: "not all in the same order", None: "none"}
SIMULATED_NDCG = (("sim_offline_ndcg", "simulated offline"), ("sim_ndcg", "simulated slates"))


def _score_table(recommenders: dict[str, Any], keys: tuple[tuple[str, str], ...]) -> Table:
    present = [(key, label) for key, label in keys if key in next(iter(recommenders.values()))]
    rows = []
    for name, scores in recommenders.items():
        rows.append([name, *(f"{fmt(scores[key]['mean'])} {fmt_ci(scores[key]['ci'])}" for key, _ in present)])
    return Table(["recommender", *(label for _, label in present)], rows)


def _lift_table(recommenders: dict[str, Any], keys: tuple[tuple[str, str], ...]) -> Table:
    rows = []
    for name, scores in recommenders.items():
        cells = [f"{fmt_pct(scores[key]['lift'])} {fmt_ci(scores[key]['lift_ci'], fmt_pct)}" for key, _ in keys]
        rows.append([name, *cells])
    return Table(["recommender", *(label for _, label in keys)], rows)


def _lift_figure(recommenders: dict[str, Any], path: Path) -> Image:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    try:
        def finite(value: Any) -> bool:
            return isinstance(value, int | float) and math.isfinite(value)

        real = [scores["ndcg"]["lift"] for scores in recommenders.values()]
        for (key, label), marker in zip(SIMULATED_NDCG, ("o", "s"), strict=True):
            points = [
                (name, x, scores[key]["lift"])
                for (name, scores), x in zip(recommenders.items(), real, strict=True)
                if finite(x) and finite(scores[key]["lift"])  # a lift over a popularity that scored 0 is undefined
            ]
            ax.scatter([x for _, x, _ in points], [y for _, _, y in points], marker=marker, label=label)
            for name, x, y in points:
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        shown = [x for x in real if finite(x)]
        ends = [min([*shown, -0.1]), max([*shown, 0.1])]
        ax.plot(ends, ends, color="grey", linewidth=0.8, label="simulated = real")
        ax.set_xlabel("real lift of NDCG@k over popularity")
        ax.set_ylabel("simulated lift over popularity")
        ax.legend(fontsize=8)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Image(path, "Each recommender's lift over popularity, simulated against real (on the grey line they agree).")


def write_validation_report(out_dir: Path, result: dict[str, Any]) -> dict[str, Path]:
    """Writes the report of :func:`metarec.calibration.validate.run_validation`'s ``result`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recommenders = result["recommenders"]
    agreement = result["agreement"]
    lines = []
    for key, label in SIMULATED_NDCG:
        a = agreement[key]
        within = [name for name, ok in a["lifts_within_target"].items() if ok]
        lines.append(
            f"{label}: Kendall's tau {fmt(a['kendall_tau'])} with the real NDCG ranking; clear real pairs "
            f"{ORDER[a['clear_pairs_same_order']]}; lifts within "
            f"max(25%, 0.02) of the real: {', '.join(within) or 'none'}"
        )
    reach = result.get("exact_simulator")
    if reach:
        def share(p: Any) -> str:
            return fmt_pct(p, signed=False)

        each = ", ".join(f"{name} {share(p)}" for name, p in reach["lift_within_target"].items())
        lines.append(
            f"an exactly right simulator, checked against {reach['draws']:,} bootstrap resamples of these users (other "
            f"real futures of the same size): Kendall's tau 1.0 in {share(reach['kendall_tau_1'])} of them, every "
            f"lift within target in {share(reach['all_lifts_within_target'])} ({each})"
        )
    about = Paragraph(
        f"{result['users_evaluated']:,} users with training history scored on the latest "
        f"{result['holdout_frac']:.0%} of {result['events']:,} events (k = {result['k']}); intervals are 95% "
        f"bootstrap intervals over users. Clear real pairs: {len(result['clear_pairs_real_ndcg'])}."
    )
    sections = [
        Section("Agreement", [about, Bullets(lines)]),
        Section("Scores", [_score_table(recommenders, SCORES)]),
        Section("Lift over popularity", [_lift_table(recommenders, (("ndcg", "real"), *SIMULATED_NDCG))]),
        Section("Plot", [_lift_figure(recommenders, out_dir / "lifts.png")]),
    ]
    cold = result.get("cold_start", {})
    if cold.get("recommenders"):
        tau = cold["agreement"]["sim_ndcg"]["kendall_tau"]
        sections.append(
            Section(
                "New users (cold start)",
                [
                    Paragraph(
                        f"{cold['users']:,} users first seen in the held-out period: no history for the "
                        f"recommenders, drawn from the fitted prior in the simulator. Kendall's tau {fmt(tau)}."
                    ),
                    _score_table(cold["recommenders"], SCORES),
                ],
            )
        )
    title = f"Policy-ranking fidelity: {result['logs']}"
    md_path, html_path = out_dir / "validation.md", out_dir / "validation.html"
    md_path.write_text(render_markdown(title, sections, out_dir), encoding="utf-8")
    html_path.write_text(render_html(title, sections), encoding="utf-8")
    return {"validation.md": md_path, "validation.html": html_path, "lifts.png": out_dir / "lifts.png"}
