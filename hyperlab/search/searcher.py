"""Optuna drives the search through Ray Tune's ``OptunaSearch``, with three changes:

* every suggestion is sized before it trains; one over the parameter budget goes back to Optuna as a
  failed (infeasible) trial and is never handed to Tune, and Optuna is asked again;
* a trial that Tune ends before it finished training (an early-stopping rule, a user stop) goes back
  to Optuna as PRUNED, not COMPLETE, so partial results never shape the front;
* the study has its own name (the search's), so unrelated searches never merge into one study.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from hyperlab.search.space import SearchSpace

log = logging.getLogger(__name__)

COMPLETE_KEY = "trial/complete"
"""Reported (=1) only in the final result of a trial that trained to the end."""
N_PARAMS_KEY = "_n_params"
OPTUNA_TRIAL_KEY = "_optuna_trial"
MAX_INFEASIBLE_IN_A_ROW = 1000


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    s = space.sampler
    if s.name == "tpe":
        kwargs = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
        # constant_liar: trials still running count as pessimistic results, so concurrent
        # suggestions spread out instead of piling onto one point.
        return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, constant_liar=True, **kwargs)
    if s.name == "nsga2":
        kwargs = {} if s.population_size is None else {"population_size": s.population_size}
        return optuna.samplers.NSGAIISampler(seed=s.seed, **kwargs)
    if s.name == "gp":
        kwargs = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
        return optuna.samplers.GPSampler(seed=s.seed, **kwargs)
    return optuna.samplers.RandomSampler(seed=s.seed)


class BudgetedOptunaSearch(OptunaSearch):
    """OptunaSearch with a parameter budget, pruned early stops and a per-search study."""

    def __init__(self, space: SearchSpace, base_config, study_name: str, data_dir: str | None = None):
        objectives = list(space.objectives)
        super().__init__(
            space=space.distributions(),
            metric=objectives,
            mode=[space.objectives[name] for name in objectives],
            sampler=make_sampler(space),
            study_name=study_name,
        )
        self._base_config = base_config
        self._max_params = space.budget.max_params if space.budget else None
        self._data_dir = data_dir
        self.infeasible: list[dict[str, Any]] = []  # [{"params": ..., "n_params": ...}], in order

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(MAX_INFEASIBLE_IN_A_ROW):
            params = super().suggest(trial_id)
            if params is None:
                return None
            ot_trial = self._ot_trials[trial_id]
            n_params = self._size(params)
            if self._max_params is None or n_params <= self._max_params:
                ot_trial.set_user_attr("n_params", n_params)
                ot_trial.set_user_attr("ray_trial_id", trial_id)
                return {**params, N_PARAMS_KEY: n_params, OPTUNA_TRIAL_KEY: ot_trial.number}
            self._reject(trial_id, ot_trial, params, n_params)
        raise RuntimeError(f"{MAX_INFEASIBLE_IN_A_ROW} suggestions in a row were over the parameter budget "
                           f"({self._max_params:,.0f}); widen the budget or narrow the space")

    def _size(self, params: dict) -> int:
        from hyperlab.training import parameter_count

        return int(parameter_count(self._base_config.with_overrides(params), self._data_dir)["total"])

    def _reject(self, trial_id: str, ot_trial, params: dict, n_params: int) -> None:
        ot_trial.set_user_attr("infeasible", f"{n_params} parameters > budget {self._max_params:.0f}")
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        del self._ot_trials[trial_id]
        self.infeasible.append({"params": params, "n_params": n_params, "optuna_trial": ot_trial.number})
        log.info("over budget, not trained: %s (%d parameters)", params, n_params)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result is not None and not error and not result.get(COMPLETE_KEY):
            result = None  # stopped before the end: Optuna records PRUNED, not a value
        super().on_trial_complete(trial_id, result=result, error=error)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study
