"""Early stopping that survives a driver crash: asynchronous successive halving (ASHA) with its rungs
in a JSON file beside the experiment.

Ray Tune does not save a scheduler's state with the experiment: after ``Tuner.restore`` its ASHA
starts with empty rungs and judges resumed trials against nothing. ``Rungs`` is the rule itself (no
Ray, plain data); ``PersistentASHA`` runs it as a Tune scheduler and writes the state after every
decision, read back on first use. A trial once stopped stays stopped: a result it reports again after
a crash (from an older checkpoint) gets STOP again.
"""

from __future__ import annotations

import json
import math

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from hyperlab.search import storage
from hyperlab.search.searcher import OPTUNA_TRIAL_KEY
from hyperlab.search.space import EarlyStopping
from hyperlab.search.trainable import EVALUATION_KEY

STATE_FORMAT = 1


class Rungs:
    """ASHA's rule (Li et al. 2020): rungs at ``grace_period * reduction_factor**k`` evaluations; a trial
    reaching a rung continues only if its value is in the best ``1/reduction_factor`` of the values
    recorded there so far (itself excluded), compared as Ray's ASHA does (a percentile cut-off)."""

    def __init__(self, grace_period: int, reduction_factor: float, max_evaluations: int, mode: str):
        grace_period = min(grace_period, max_evaluations)
        count = int(math.log(max_evaluations / grace_period) / math.log(reduction_factor) + 1e-9) + 1
        self.milestones = [grace_period * reduction_factor ** k for k in range(count)]
        self.reduction_factor, self.sign = reduction_factor, 1.0 if mode == "max" else -1.0
        self.recorded: list[dict[str, float]] = [{} for _ in self.milestones]  # per rung: trial -> value
        self.stopped: dict[str, int] = {}  # trial -> evaluation at which it was stopped

    def decide(self, trial_id: str, evaluation: int, value: float) -> bool:
        """Whether the trial continues after reporting ``value`` at its ``evaluation``-th evaluation."""
        if trial_id in self.stopped:
            return False
        for rung in reversed(range(len(self.milestones))):  # the highest rung reached and not yet passed
            if evaluation < self.milestones[rung]:
                continue
            recorded = self.recorded[rung]
            if trial_id in recorded:
                return True
            reward = self.sign * value
            cutoff = (np.nanpercentile(list(recorded.values()), (1 - 1 / self.reduction_factor) * 100)
                      if recorded else None)
            recorded[trial_id] = reward
            if cutoff is not None and reward < cutoff:
                self.stopped[trial_id] = evaluation
                return False
            return True
        return True

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "milestones": self.milestones, "recorded": self.recorded,
                "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT or state.get("milestones") != self.milestones:
            raise ValueError(f"early-stopping state of another format or schedule: {state.get('milestones')}")
        self.recorded = [{str(k): float(v) for k, v in rung.items()} for rung in state["recorded"]]
        self.stopped = {str(k): int(v) for k, v in state["stopped"].items()}


class PersistentASHA(FIFOScheduler):
    """ASHA on evaluations of ``rule.metric``, its rungs kept in ``state_path``, trials known by their
    Optuna number (a trial adopted after a crash is the same trial under a new Tune id)."""

    def __init__(self, rule: EarlyStopping, mode: str, max_evaluations: int, state_path: str):
        super().__init__()
        self._metric, self._state_path = rule.metric, str(state_path)
        self._rungs = Rungs(rule.grace_period, rule.reduction_factor, max_evaluations, mode)
        self._loaded = False

    def _load_once(self) -> None:
        if self._loaded:
            return
        saved = storage.read_bytes(self._state_path)
        if saved is not None:
            try:
                self._rungs.load_state_dict(json.loads(saved))
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise RuntimeError(f"{self._state_path}: unreadable early-stopping state ({err})") from None
        self._loaded = True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._load_once()
        if EVALUATION_KEY not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        number = str(trial.config[OPTUNA_TRIAL_KEY])
        keep = self._rungs.decide(number, int(result[EVALUATION_KEY]), float(result[self._metric]))
        storage.write_bytes(self._state_path, json.dumps(self._rungs.state_dict()).encode())
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP
