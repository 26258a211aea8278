"""Reading the results dict of an A/B test (the content of ``results.json``) for its report and plots."""

from __future__ import annotations

from typing import Any

from metarec.reporting import number

__all__ = [
    "arm_effect",
    "arm_value",
    "ci_level",
    "correction_phrase",
    "guardrail_items",
    "higher_is_better",
    "metric_order",
    "srm_flagged",
    "treatment_arms",
]


def treatment_arms(results: dict[str, Any]) -> list[str]:
    """Every arm except the control, in the order of ``results["arms"]``."""
    return [arm for arm in results["arms"] if arm != results["control"]]


def metric_order(results: dict[str, Any]) -> list[str]:
    """The metrics with an effect: the primary first, then the order of ``results["metrics"]``."""
    measured = [metric for effects in (results.get("effects") or {}).values() for metric in effects]
    names = [metric for metric in results.get("metrics") or {} if metric in measured]
    names += [metric for metric in dict.fromkeys(measured) if metric not in names]
    primary = results.get("primary_metric")
    return sorted(names, key=lambda metric: metric != primary)  # stable: the primary moves to the front


def arm_effect(results: dict[str, Any], arm: str, metric: str) -> dict[str, Any] | None:
    """The effect of ``arm`` on ``metric`` versus the control, or None."""
    return ((results.get("effects") or {}).get(arm) or {}).get(metric)


def arm_value(results: dict[str, Any], arm: str, metric: str) -> Any:
    """The value of ``metric`` in ``arm`` over the whole test, or None."""
    return ((results["arms"].get(arm) or {}).get("metrics") or {}).get(metric)


def higher_is_better(results: dict[str, Any], metric: str) -> bool:
    return bool(((results.get("metrics") or {}).get(metric) or {}).get("higher_is_better", True))


def guardrail_items(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(arm, metric, guardrail)`` for every guardrail of every treatment."""
    return [
        (arm, metric, guard)
        for arm, per_metric in (results.get("guardrails") or {}).items()
        for metric, guard in per_metric.items()
    ]


def ci_level(results: dict[str, Any]) -> str:
    """``95%`` for alpha = 0.05."""
    alpha = number(results.get("alpha"))
    return f"{100 * (1 - alpha):g}%" if alpha is not None else "(1 - alpha)"


def correction_phrase(results: dict[str, Any]) -> str:
    correction = results.get("correction")
    return "without multiple-testing correction" if correction in (None, "none") else f"after {correction} correction"


def srm_flagged(results: dict[str, Any]) -> bool:
    return bool((results.get("srm") or {}).get("flagged"))
