"""Robustness of ``meta-eval``: the adaptation protocol again on the same held-out populations, each moved by a
stated amount in one respect that a deployed recommender meets when its users change.

Each perturbation changes every population of the split alike, on top of what the population drew:

* ``choice_temperature x1.5``: choices 1.5 times as noisy (a user follows utility less closely);
* ``position_bias +0.1``: a slate's lower positions lose 10% more weight each (``exp(-0.1 k)`` more);
* ``drift x2``: twice every drift rate (consumption pull, Ornstein-Uhlenbeck noise, abrupt-shift hazard, trend),
  each capped at its largest valid value.

The perturbed runs use the unperturbed runs' seeds, so every method meets the same users under each, and the
normalisation (random 0, the oracle 1) is redone under each perturbation. Reported per method and perturbation:
the mean over populations of the normalised return over sessions 1-10, its worst decile, and both changes from
the unperturbed populations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metarec.config import validate_config
from metarec.envs.drifting.params import SimulatorConfig, UserPopulation
from metarec.envs.fitted_task import with_fields_of

Change = Callable[[UserPopulation], dict[str, float]]


def _drift_twice(p: UserPopulation) -> dict[str, float]:
    return {
        "consumption_pull": min(1.0, 2 * p.consumption_pull),
        "ou_noise": 2 * p.ou_noise,
        "shift_hazard": min(1.0, 2 * p.shift_hazard),
        "trend_rate": 2 * p.trend_rate,
    }


#: Perturbation name -> the population fields it sets, from the population's own.
PERTURBATIONS: dict[str, Change] = {
    "choice_temperature x1.5": lambda p: {"choice_temperature": 1.5 * p.choice_temperature},
    "position_bias +0.1": lambda p: {"position_bias": p.position_bias + 0.1},
    "drift x2": _drift_twice,
}


def perturbed(name: str) -> Callable[[list[SimulatorConfig]], list[SimulatorConfig]]:
    """The function that applies perturbation ``name`` to a meta-batch of tasks."""
    if name not in PERTURBATIONS:
        raise ValueError(f"perturbation: expected one of {', '.join(PERTURBATIONS)}, got {name!r}")

    def apply(tasks: list[SimulatorConfig]) -> list[SimulatorConfig]:
        out = []
        for i, task in enumerate(tasks):
            values = task.model_dump()
            values["population"].update(PERTURBATIONS[name](task.population))
            out.append(with_fields_of(task, validate_config(SimulatorConfig, values, where=f"tasks[{i}] ({name})")))
        return out

    return apply


def robustness_section(base: dict[str, Any], runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``robustness`` section of a ``meta-eval`` result: ``base`` is the unperturbed result, ``runs`` the
    result under each perturbation (as :func:`~metarec.meta.evaluate.adaptation_curves` returns them)."""
    methods: dict[str, dict[str, Any]] = {}
    for method, entry in base["methods"].items():
        before = entry["populations"]
        methods[method] = {}
        for name, result in runs.items():
            after = result["methods"][method]["populations"]
            methods[method][name] = {
                "mean": after["mean"],
                "worst_decile": after["worst_decile"],
                "mean_change": _difference(after["mean"], before["mean"]),
                "worst_decile_change": _difference(after["worst_decile"], before["worst_decile"]),
            }
    return {"perturbations": list(runs), "methods": methods}


def _difference(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before
