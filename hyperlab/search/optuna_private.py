"""The one place hyperlab reaches into Optuna's private parts.

``Study.ask`` creates a trial, then writes its parameters one by one; a driver killed in between leaves
a trial with some or none of them. ``finish_ask`` writes the rest as that ask would have (``Trial`` on
the existing trial, then ``Trial._suggest`` for each distribution, which keeps the ones already written),
so the trial is adopted under its own number. ``storage_trial_id`` is a trial's id in the storage (what
its storage calls take), which ``Study.ask`` knows and does not expose: kept, it saves a look-up by number
for every later call about that trial. ``set_system_attr`` writes a trial's system attribute (what
Optuna's genetic samplers keep a trial's generation in; ``Study`` has no public call for it), and
``nsga2_elite`` is NSGA-II's selection of the elite (a class Optuna does not export). Tested on
Optuna 5.0 (``pyproject.toml`` bounds it).
"""

from __future__ import annotations

import optuna


def finish_ask(study: optuna.Study, trial_id: int, distributions: dict) -> dict:
    """Complete an ask that was cut short with the study's sampler; the trial's parameters."""
    trial = optuna.trial.Trial(study, trial_id)
    for name, distribution in distributions.items():
        trial._suggest(name, distribution)
    return dict(trial.params)


def storage_trial_id(trial: optuna.Trial) -> int:
    """The storage's id of a trial that ``Study.ask`` returned."""
    return trial._trial_id


def set_system_attr(study: optuna.Study, trial: optuna.trial.FrozenTrial, key: str, value) -> None:
    """Write a system attribute of one of the study's trials."""
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def nsga2_elite(study: optuna.Study, trials: list, size: int) -> list:
    """NSGA-II's elite of ``trials``: at most ``size`` of them, by non-dominated rank (feasible first when
    they carry constraints), the last rank cut by crowding distance."""
    from optuna.samplers.nsgaii._elite_population_selection_strategy import NSGAIIElitePopulationSelectionStrategy

    return NSGAIIElitePopulationSelectionStrategy(population_size=size)(study, trials)
