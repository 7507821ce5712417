"""Early stopping that survives a driver crash.

Ray Tune does not save a scheduler's state with the experiment: after ``Tuner.restore`` an ASHA
scheduler starts with empty rungs and judges resumed trials against nothing. This one writes its
state to a file beside the experiment after every decision and reads it back on first use.
"""

from __future__ import annotations

import pickle

from ray.tune.schedulers import AsyncHyperBandScheduler

from hyperlab.search import storage
from hyperlab.search.space import EarlyStopping


class PersistentASHA(AsyncHyperBandScheduler):
    """ASHA on evaluations (``training_iteration``), its rungs kept in ``state_path``."""

    def __init__(self, rule: EarlyStopping, mode: str, max_evaluations: int, state_path: str):
        super().__init__(
            time_attr="training_iteration",
            metric=rule.metric,
            mode=mode,
            grace_period=min(rule.grace_period, max_evaluations),
            max_t=max_evaluations,
            reduction_factor=rule.reduction_factor,
            brackets=1,
        )
        self._state_path = str(state_path)
        self._loaded = False

    def _load_once(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        saved = storage.read_bytes(self._state_path)
        if saved is not None:
            state = pickle.loads(saved)
            state.pop("_state_path", None)
            self.__dict__.update(state)

    def _save(self) -> None:
        storage.write_bytes(self._state_path, pickle.dumps(self.__dict__))

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load_once()
        if trial.trial_id not in self._trial_info:  # a resumed trial keeps its bracket
            super().on_trial_add(tune_controller, trial)
            self._save()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._load_once()
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._load_once()
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._load_once()
        if self._trial_info.pop(trial.trial_id, None) is not None:
            self._save()
