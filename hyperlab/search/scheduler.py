"""Early stopping that survives a driver crash: asynchronous successive halving with its rungs in a
JSON file beside the experiment, on one metric (ASHA) or on the search's objective vector (MO-ASHA).

Ray Tune does not save a scheduler's state with the experiment: after ``Tuner.restore`` its ASHA
starts with empty rungs and judges resumed trials against nothing. ``Rungs`` and ``ParetoRungs`` are
the rules themselves (no Ray, plain data); ``PersistentASHA`` runs one as a Tune scheduler and writes
the state after every decision, before Tune acts on it, read back on first use. A trial once stopped
stays stopped: one that a crash caught between the decision and Ray's next experiment snapshot comes back
on resume (Tune restores it, or the searcher adopts it) from its checkpoint, which is the one of the
evaluation it was stopped at; it reports its evaluations again up to that one, without training, and
gets STOP there.

Why MO-ASHA: a small model has a worse metric than a large one at every rung, so ASHA on the metric
stops the small models first and the small end of the front is never trained to the end. MO-ASHA
(Schmucker et al. 2021) ranks the rung's objective vectors instead; the parameter count in them is
exact from the first result on.
"""

from __future__ import annotations

import json
import math

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from hyperlab.metrics import direction
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
        if trial_id in self.stopped:  # stopped before: only its evaluations up to the stop, reported again
            return evaluation < self.stopped[trial_id]
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


def pareto_order(vectors: list[tuple[float, ...]]) -> list[int]:
    """Indices of ``vectors`` (every objective minimised) best first: by non-dominated front (front 0
    dominated by none, front 1 by front 0 only, ...), within a front by crowding distance, largest first
    (NSGA-II's: the sum over objectives of the gap between a point's neighbours, scaled by the front's
    range; a front's extremes have an infinite distance), then by the vector, then by index (equal
    vectors keep their order of arrival)."""
    points = np.asarray(vectors, dtype=float).reshape(len(vectors), -1)
    left = list(range(len(points)))
    order: list[int] = []
    while left:
        front = [i for i in left if not any(_dominates(points[j], points[i]) for j in left if j != i)]
        distance = _crowding(points[front])
        order += [front[k] for k in sorted(range(len(front)), key=lambda k: (-distance[k], tuple(points[front[k]]),
                                                                                   front[k]))]
        left = [i for i in left if i not in set(front)]
    return order


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def _crowding(front: np.ndarray) -> np.ndarray:
    n, distance = len(front), np.zeros(len(front))
    if n <= 2:
        return np.full(n, np.inf)
    for column in front.T:
        by = sorted(range(n), key=lambda k: (column[k], k))
        distance[by[0]] = distance[by[-1]] = np.inf
        span = column[by[-1]] - column[by[0]]
        if span > 0:
            for rank in range(1, n - 1):
                distance[by[rank]] += (column[by[rank + 1]] - column[by[rank - 1]]) / span
    return distance


class ParetoRungs(Rungs):
    """MO-ASHA's rule: the rungs of ASHA; a trial reaching a rung continues if it is among the best
    ``ceil(n / reduction_factor)`` of the ``n`` trials recorded there, itself included, in
    ``pareto_order`` of their objective vectors; and always if no trial there dominates it and it is
    best there in some objective (the smallest model at a rung always continues unless dominated). The
    first trial at a rung continues."""

    def __init__(self, grace_period: int, reduction_factor: float, max_evaluations: int, modes: list[str]):
        super().__init__(grace_period, reduction_factor, max_evaluations, "min")
        self.signs = np.array([1.0 if mode == "min" else -1.0 for mode in modes])  # all minimised

    def decide(self, trial_id: str, evaluation: int, value) -> bool:
        if trial_id in self.stopped:  # stopped before: only its evaluations up to the stop, reported again
            return evaluation < self.stopped[trial_id]
        for rung in reversed(range(len(self.milestones))):
            if evaluation < self.milestones[rung]:
                continue
            recorded = self.recorded[rung]
            if trial_id in recorded:
                return True
            recorded[trial_id] = [float(v) for v in self.signs * np.asarray(value, dtype=float)]
            if not self._continues(recorded, trial_id):
                self.stopped[trial_id] = evaluation
                return False
            return True
        return True

    def _continues(self, recorded: dict[str, list[float]], trial_id: str) -> bool:
        ids = list(recorded)
        points = [tuple(recorded[i]) for i in ids]
        me = ids.index(trial_id)
        if me in pareto_order(points)[:math.ceil(len(ids) / self.reduction_factor)]:
            return True
        mine = np.asarray(points[me])
        if any(_dominates(np.asarray(p), mine) for p in points):
            return False
        return bool(np.any(mine <= np.min(np.asarray(points), axis=0)))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rule": "moasha"}

    def load_state_dict(self, state: dict) -> None:
        if state.get("rule") != "moasha" or state.get("format") != STATE_FORMAT or \
                state.get("milestones") != self.milestones:
            raise ValueError(f"early-stopping state of another rule or schedule: {state.get('rule', 'asha')}, "
                             f"{state.get('milestones')}")
        self.recorded = [{str(k): [float(x) for x in v] for k, v in rung.items()} for rung in state["recorded"]]
        self.stopped = {str(k): int(v) for k, v in state["stopped"].items()}


class PersistentASHA(FIFOScheduler):
    """ASHA on evaluations of ``rule.metric``, or MO-ASHA on ``objectives`` (name -> min/max), its rungs
    kept in ``state_path``, trials known by their Optuna number (a trial adopted after a crash is the same
    trial under a new Tune id)."""

    def __init__(self, rule: EarlyStopping, objectives: dict[str, str], max_evaluations: int, state_path: str):
        super().__init__()
        self._state_path = str(state_path)
        if rule.rule == "moasha" or (rule.rule is None and rule.metric is None):
            self._metrics = list(objectives)
            self._rungs = ParetoRungs(rule.grace_period, rule.reduction_factor, max_evaluations,
                                      list(objectives.values()))
        else:
            self._metrics = [rule.metric]
            self._rungs = Rungs(rule.grace_period, rule.reduction_factor, max_evaluations, direction(rule.metric))
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
        if EVALUATION_KEY not in result or any(name not in result for name in self._metrics):
            return TrialScheduler.CONTINUE
        number = str(trial.config[OPTUNA_TRIAL_KEY])
        values = [float(result[name]) for name in self._metrics]
        keep = self._rungs.decide(number, int(result[EVALUATION_KEY]),
                                  values if isinstance(self._rungs, ParetoRungs) else values[0])
        storage.write_bytes(self._state_path, json.dumps(self._rungs.state_dict()).encode())
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP
