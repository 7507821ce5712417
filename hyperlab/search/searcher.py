"""Optuna drives the search through its ask-and-tell interface, on a stored study (a journal file or a
database: ``hyperlab.search.study_storage``), as a Ray Tune ``Searcher``:

* every suggestion is sized before it trains; with a parameter budget each trial carries the Optuna
  constraint ``n_params_over_budget`` (its parameters minus the budget: feasible at most 0, as Optuna's
  constrained samplers read it); one over the budget never reaches Tune: it is told PRUNED with its
  constraint violated (TPE ranks such trials below every feasible one, by how far over they are, so it
  learns where the budget binds; a FAIL it would ignore), user attribute ``infeasible``, and Optuna is
  asked again;
* a configuration is trained once per search: a suggestion identical to a trial handed out before is
  told FAIL with the user attribute ``duplicate_of`` (that trial holds the result), and Optuna is asked
  again (the search's ``trials`` counts configurations trained);
* a trial that trained to the end is told COMPLETE with its objectives, one stopped early PRUNED,
  one that failed FAIL; a trial told already (a resumed run reporting its final result again) is
  left as it is. TPE takes a PRUNED trial as Optuna does, behind every complete one (with the trials
  that shape its density of bad configurations): under MO-ASHA a stopped trial is one dominated at its
  rung, which is evidence against its configuration, not against its size (measured against leaving
  stopped trials out of TPE's model: ``benchmarks/sampler_pruning.py``, README). NSGA-II is
  ``EarlyStoppedNSGAII``, whose generations advance on stopped trials too;
* the study is the record of what was suggested: an Optuna trial asked after Ray's last experiment
  snapshot (a driver killed in between, even between the ask and the hand-out) is *adopted* on resume
  (handed to Tune again, with its number and parameters) instead of a new one being asked;
* each ask uses a sampler seeded by the search's seed and the trial's number, so the suggestions do
  not depend on when the driver was interrupted;
* the study's database is used off Tune's loop, on one thread, in order: a tell as a trial ends, and the
  next suggestion asked (and sized) as soon as one is handed out, so that Tune's next ``suggest`` finds it
  ready; the database's round trips never hold up the loop that runs the trials.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import warnings
from typing import Any

import optuna
from ray.tune.search import Searcher

from hyperlab.search import optuna_private
from hyperlab.search.space import SearchSpace
from hyperlab.search.study_storage import open_storage

log = logging.getLogger(__name__)

COMPLETE_KEY = "trial/complete"
"""Reported (=1) only in the final result of a trial that trained to the end."""
N_PARAMS_KEY = "_n_params"
OPTUNA_TRIAL_KEY = "_optuna_trial"
MAX_UNTRAINED_IN_A_ROW = 1000
ATTR_RAY_TRIAL = "ray_trial_id"
ATTR_N_PARAMS = "n_params"
ATTR_INFEASIBLE = "infeasible"
ATTR_DUPLICATE_OF = "duplicate_of"
ATTR_EXHAUSTED = "exhausted"
"""The study's user attribute once the search ran out of configurations to train (its reason): no more
are asked, and the search ends with the trials it has."""
CONSTRAINT_BUDGET = "n_params_over_budget"
"""The Optuna constraint of a search with a parameter budget: parameters minus the budget (feasible at most 0)."""


def _key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def make_sampler(space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
    s = space.sampler
    if s.name == "tpe":
        kwargs = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
        # constant_liar: trials still running count as pessimistic results, so concurrent
        # suggestions spread out instead of piling onto one point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, **kwargs)
    if s.name == "nsga2":
        kwargs = {} if s.population_size is None else {"population_size": s.population_size}
        return EarlyStoppedNSGAII(seed=seed, **kwargs)
    if s.name == "gp":
        kwargs = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
        return optuna.samplers.GPSampler(seed=seed, **kwargs)
    return optuna.samplers.RandomSampler(seed=seed)


class EarlyStoppedNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II for a search that stops trials early. Optuna's NSGA-II counts a generation as done once
    ``population_size`` of its trials are COMPLETE; when early stopping ends most trials PRUNED, a
    generation lasts several times its size and the first one, sampled at random, most of the search.
    Here a generation is done once ``population_size`` of its trials *ended in training*, complete or
    stopped early (not those over the budget, never trained), and the parents of generation ``g`` are
    NSGA-II's elite (non-dominated rank, then crowding distance; feasible first) of every trial that
    completed in generations before ``g``: a stopped trial has no final objectives and is never a parent,
    and a generation with few completions keeps the parents earlier ones found. While fewer than two
    trials have completed, a generation is sampled at random."""

    def get_trial_generation(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
        key = self._get_generation_key()
        generation = trial.system_attrs.get(key)
        if generation is not None:
            return generation
        State = optuna.trial.TrialState
        ended = [t.system_attrs.get(key, -1) for t in study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED))
                 if t.state == State.COMPLETE or ATTR_INFEASIBLE not in t.user_attrs]
        latest = max(ended, default=0)
        generation = latest + 1 if ended.count(latest) >= self.population_size else max(latest, 0)
        optuna_private.set_system_attr(study, trial, key, generation)
        return generation

    def select_parent(self, study: optuna.Study, generation: int) -> list[optuna.trial.FrozenTrial]:
        key = self._get_generation_key()
        earlier = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                   if t.system_attrs.get(key, 0) < generation]
        if len(earlier) < 2:
            return []
        return optuna_private.nsga2_elite(study, earlier, self.population_size)


def trial_seed(seed: int | None, number: int) -> int | None:
    """The sampler seed of the ask that makes trial ``number``."""
    return None if seed is None else (seed * 1_000_003 + number) % 2**32


def create_study(space: SearchSpace, name: str, url: str) -> optuna.Study:
    """The search's study (created, or loaded when it exists), with its objectives' names."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(url), study_name=name, load_if_exists=True,
                                directions=["minimize" if d == "min" else "maximize" for d in space.objectives.values()])
    if study.metric_names is None:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and what optuna-dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(space.objectives))
    return study


SEARCHERS: dict[str, StudySearcher] = {}
"""The searcher of each search this driver runs (Tune restores its own copy): the runner waits on its tells."""


_SEALED = threading.Event()
_WRITING = threading.Lock()  # held while a job of a study's thread runs


def seal_studies() -> None:
    """SIGTERM: this driver writes nothing more to any study. A job already running finishes first; those
    still queued do nothing. Tune's loop goes on until the driver exits, and a trial that ends meanwhile is
    told on resume, as after a kill, not now, when its end no longer reaches MLflow (its record is closed)."""
    with _WRITING:
        _SEALED.set()


def _unless_sealed(fn, *args):
    with _WRITING:
        if _SEALED.is_set():
            return None
        return fn(*args)


def wait_for_tells(name: str) -> None:
    searcher = SEARCHERS.pop(name, None)
    if searcher is not None:
        searcher.wait_for_tells()


def all_trials_ended(study_name: str, url: str, total: int) -> bool:
    """Whether ``total`` trials were handed out and every one has ended (what the study records, not what
    Ray's last snapshot saw: trials may have ended after it)."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    handed = [t for t in study.get_trials(deepcopy=False) if ATTR_RAY_TRIAL in t.user_attrs]
    asked_all = len(handed) >= total or ATTR_EXHAUSTED in study.user_attrs
    return asked_all and all(t.state.is_finished() for t in handed)


def failed_trials(study_name: str, url: str) -> set[int]:
    """Numbers of the trials handed out to Tune that the study holds FAIL."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    return {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
            if ATTR_RAY_TRIAL in t.user_attrs}


def tell_ended(study_name: str, url: str, objectives, ended: dict[int, tuple[str, dict]]) -> int:
    """Tell the study the end of trials that Tune saw end (``ended``: Optuna number -> Tune status and last
    result) but that it still holds RUNNING: a driver killed between Tune's snapshot of a trial's end and the
    searcher's tell of it. Returns how many were told."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    told = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number not in ended:
            continue
        status, result = ended[trial.number]
        if status == "ERROR":
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        elif result.get(COMPLETE_KEY):
            study.tell(trial.number, [float(result[name]) for name in objectives])
        else:
            study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
        told += 1
    return told


class StudySearcher(Searcher):
    """Suggestions from the search's Optuna study (see the module docstring)."""

    def __init__(self, space: SearchSpace, base_config, study_name: str, optuna_storage: str,
                 data_dir: str | None = None):
        super().__init__(metric=None, mode=None)
        self._space, self._base_config, self._data_dir = space, base_config, data_dir
        self._study_name, self._url = study_name, optuna_storage
        self._max_params = space.budget.max_params if space.budget else None
        self._numbers: dict[str, int] = {}  # Tune's trial id -> Optuna trial number, for trials Tune knows
        self._ended: set[int] = set()       # numbers of the trials whose end Tune has seen
        self._adopt: list[int] = []          # numbers asked but unknown to Tune's restored state
        self._storage_obj = self._study_obj = None
        self._next_number: int | None = None  # the number the next ask gets
        self._handed: int | None = None       # trials handed to Tune so far (this search, every driver)
        self._tells: concurrent.futures.ThreadPoolExecutor | None = None  # the study's one thread
        self._ahead: concurrent.futures.Future | None = None  # the next suggestion, being asked
        self._adopted_asks = False  # whether this driver took up the asks a stopped one never handed out
        self._asked: dict[int, optuna.Trial] = {}  # trials this driver asked, until told (no look-ups by number)
        self._trial_ids: dict[int, int] = {}       # Optuna number -> the storage's trial id
        self._study_id: int | None = None
        self._trained: dict[tuple, int] = {}  # parameters -> number of the trial handed out (or to be) with them
        self._sizes: dict[tuple, int] = {}    # parameters -> parameter count

    def __getstate__(self):  # Tune pickles its searcher with the experiment: no database handles, no threads
        return {**self.__dict__, "_storage_obj": None, "_study_obj": None, "_next_number": None, "_handed": None,
                "_tells": None, "_ahead": None, "_adopted_asks": False, "_asked": {}, "_trial_ids": {}, "_study_id": None,
                "_trained": {}, "_sizes": {}}

    @property
    def study(self) -> optuna.Study:
        if self._study_obj is None:
            self._storage_obj = open_storage(self._url)
            self._study_obj = optuna.load_study(study_name=self._study_name, storage=self._storage_obj)
        return self._study_obj

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    # ---- suggestions ------------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        if not self._adopted_asks:  # once per driver (restore adopts them first): a stopped driver's asks
            self._adopted_asks = True
            self._adopt += [n for n in self._unhanded_asks() if n not in self._adopt]
        if self._adopt:
            return self._hand_out(trial_id, self._adopt.pop(0))
        if self._handed is None:  # once per driver: trials handed out before, known to Tune's snapshot or not
            self._handed = sum(ATTR_RAY_TRIAL in t.user_attrs for t in self.study.get_trials(deepcopy=False))
            if ATTR_EXHAUSTED in self.study.user_attrs:
                self._handed = self._space.trials  # ran out before: nothing more to ask
        if self._handed >= self._space.trials:
            return Searcher.FINISHED  # some ended after Ray's last snapshot: Tune's own count is behind
        ahead, self._ahead = self._ahead, None
        asked = (ahead or self._submit(self._ask)).result()
        if asked is None:
            return Searcher.FINISHED
        number, params, n_params = asked
        self._submit(self._set_handed_out, number, trial_id)
        self._numbers[trial_id] = number
        self._handed += 1
        if self._handed < self._space.trials:
            self._ahead = self._submit(self._ask)
        return {**params, N_PARAMS_KEY: n_params, OPTUNA_TRIAL_KEY: number}

    def _ask(self) -> tuple[int, dict, int] | None:
        """The next trial to train: (number, parameters, size), sized and recorded in the study, not yet
        handed out; None after too many suggestions in a row that were not trained (over the budget, or a
        configuration this search trains already)."""
        distributions = self._space.distributions()
        State = optuna.trial.TrialState
        for _ in range(MAX_UNTRAINED_IN_A_ROW):
            study = self.study
            if self._next_number is None:  # once per driver: this one is the study's only writer
                trials = study.get_trials(deepcopy=False)
                self._next_number = len(trials)
                self._trained = {_key(t.params): t.number for t in trials if ATTR_RAY_TRIAL in t.user_attrs}
            study.sampler = make_sampler(self._space, trial_seed(self._space.sampler.seed, self._next_number))
            trial = study.ask(distributions)
            self._next_number = trial.number + 1
            self._trial_ids[trial.number] = optuna_private.storage_trial_id(trial)
            key = _key(trial.params)
            if key in self._trained:
                self._tell_duplicate(trial, self._trained[key])
                continue
            n_params = self._size(trial.params)
            trial.set_user_attr(ATTR_N_PARAMS, n_params)
            if self._max_params is not None:  # what constrained samplers (TPE, NSGA-II) learn the budget from
                trial.set_constraint(CONSTRAINT_BUDGET, n_params - self._max_params)
            if self._max_params is None or n_params <= self._max_params:
                self._asked[trial.number] = trial
                self._trained[key] = trial.number
                return trial.number, trial.params, n_params
            trial.set_user_attr(ATTR_INFEASIBLE, f"{n_params} parameters > budget {self._max_params:.0f}")
            study.tell(trial, state=State.PRUNED)  # with its constraint violated (see the module docstring)
            log.info("over budget, not trained: %s (%d parameters)", trial.params, n_params)
        reason = (f"{MAX_UNTRAINED_IN_A_ROW} suggestions in a row were over the parameter budget "
                  f"({'none' if self._max_params is None else f'{self._max_params:,.0f}'}) or configurations trained "
                  f"already")
        log.error("%s: no more trials start; widen the budget or the space", reason)
        self.study.set_user_attr(ATTR_EXHAUSTED, reason)
        return None

    def _tell_duplicate(self, trial: optuna.Trial, number: int) -> None:
        """A suggestion identical to trial ``number`` of this search is not trained: told FAIL, user
        attribute ``duplicate_of`` (the earlier trial holds the result; a copy told as a result would weigh
        the same point twice in the sampler's model, and pull it back there)."""
        trial.set_user_attr(ATTR_DUPLICATE_OF, number)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        log.info("trial %d is trial %d's configuration again: not trained", trial.number, number)

    def _set_handed_out(self, number: int, trial_id: str) -> None:
        self.study  # noqa: B018 - connects
        self._storage_obj.set_trial_user_attr(self._trial_storage_id(number), ATTR_RAY_TRIAL, trial_id)

    def _hand_out(self, trial_id: str, number: int) -> dict:
        storage_id = self._trial_storage_id(number)
        frozen = self._storage_obj.get_trial(storage_id)
        if not frozen.state.is_finished():  # an ended one (see ``orphans``) keeps its record as it is
            self._storage_obj.set_trial_user_attr(storage_id, ATTR_RAY_TRIAL, trial_id)
        self._numbers[trial_id] = number
        return {**frozen.params, N_PARAMS_KEY: frozen.user_attrs[ATTR_N_PARAMS], OPTUNA_TRIAL_KEY: number}

    def _trial_storage_id(self, number: int) -> int:
        if number not in self._trial_ids:
            self.study  # noqa: B018 - connects
            if self._study_id is None:
                self._study_id = self._storage_obj.get_study_id_from_name(self._study_name)
            self._trial_ids[number] = self._storage_obj.get_trial_id_from_study_id_trial_number(self._study_id, number)
        return self._trial_ids[number]

    def _state(self, number: int) -> optuna.trial.TrialState:
        self.study  # noqa: B018 - connects
        return self._storage_obj.get_trial(self._trial_storage_id(number)).state

    def _size(self, params: dict) -> int:
        from hyperlab.training import parameter_count

        key = _key(params)
        if key not in self._sizes:
            self._sizes[key] = int(parameter_count(self._base_config.with_overrides(params), self._data_dir)["total"])
        return self._sizes[key]

    # ---- results ----------------------------------------------------------------------------------------
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell Optuna, off Tune's loop (in order, on one thread). A tell lost with the driver heals on
        resume: the trial is unfinished in the study, so it is restored or adopted and reports its end
        again from its final checkpoint."""
        number = self._numbers.pop(trial_id, None)
        if number is None:
            return
        self._ended.add(number)
        values = None
        if not error and result is not None and result.get(COMPLETE_KEY):
            values = [float(result[name]) for name in self._space.objectives]
        self._submit(self._tell, number, values, error)

    def _tell(self, number: int, values: list[float] | None, error: bool) -> None:
        try:
            trial = self._asked.pop(number, None)  # asked by this driver: running, and told only here
            if trial is None and self._state(number).is_finished():
                return  # told before the driver stopped; a resumed trial reports its end again
            trial = number if trial is None else trial
            State = optuna.trial.TrialState
            if error:
                self.study.tell(trial, state=State.FAIL)
            elif values is not None:
                self.study.tell(trial, values)
            else:  # stopped before the end: a partial result never shapes the front
                self.study.tell(trial, state=State.PRUNED)
        except Exception:  # noqa: BLE001 - the study heals on resume (see on_trial_complete)
            log.exception("could not tell Optuna the end of trial %d", number)

    def _submit(self, fn, *args) -> concurrent.futures.Future:
        return self._teller().submit(_unless_sealed, fn, *args)

    def _teller(self) -> concurrent.futures.ThreadPoolExecutor:
        """The one thread that uses the study's database while Tune runs: tells, asks, hand-outs."""
        if self._tells is None:
            self._tells = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hyperlab-optuna")
            SEARCHERS[self._study_name] = self
        return self._tells

    def wait_for_tells(self) -> None:
        """Every tell and hand-out submitted so far is done (a snapshot, the end of the search)."""
        if self._tells is not None:
            self._tells.submit(lambda: None).result()

    # ---- Tune's experiment snapshots ---------------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        self.wait_for_tells()
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))
        self._record_hand_outs()
        self._adopt = self.orphans()

    def _record_hand_outs(self) -> None:
        """Trials Tune's snapshot holds whose hand-out the study never recorded (a SIGTERM sealed the study,
        or a kill came, between the hand-out and its record): recorded now. Tune runs them as its own, so
        they are neither adopted again nor missing from the count of trials handed out."""
        tune_ids = {number: trial_id for trial_id, number in self._numbers.items()}
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number in tune_ids and ATTR_RAY_TRIAL not in trial.user_attrs:
                self._storage_obj.set_trial_user_attr(self._trial_storage_id(trial.number), ATTR_RAY_TRIAL,
                                                      tune_ids[trial.number])

    def orphans(self) -> list[int]:
        """Numbers of the study's trials that Tune's restored state does not know: the ones to adopt, in
        order. A trial handed out after the last snapshot is adopted as it is; so is one asked but never
        handed out (see ``_unhanded_asks``); and so is one that was handed out and ended (complete, or
        stopped early) after the last snapshot: Tune never saw its end, so neither did its MLflow record,
        perhaps; it continues from its last checkpoint, which reports its evaluations again, trains nothing
        (it is its final one, or the one it was stopped at) and ends it again (the study is told nothing new)."""
        known = set(self._numbers.values()) | self._ended
        State = optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False, states=(State.RUNNING, State.COMPLETE, State.PRUNED))
        handed = [t.number for t in trials if t.number not in known and ATTR_RAY_TRIAL in t.user_attrs]
        self._adopted_asks = True
        return sorted(handed + self._unhanded_asks())

    def _unhanded_asks(self) -> list[int]:
        """Trials a stopped driver asked but never handed out (the next suggestion is asked ahead): sized and
        adopted like fresh suggestions (told FAIL over the budget), so that none is asked again under a new
        number. An ask cut short (the driver killed while it wrote the parameters) is finished first, with
        the sampler that ask had: the trial gets the parameters it would have had."""
        adopt = []
        distributions = self._space.distributions()
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if ATTR_RAY_TRIAL in trial.user_attrs:
                continue
            storage_id = self._trial_storage_id(trial.number)
            params = trial.params
            if set(params) != set(distributions):
                self.study.sampler = make_sampler(self._space, trial_seed(self._space.sampler.seed, trial.number))
                params = optuna_private.finish_ask(self.study, storage_id, distributions)
            n_params = self._size(params)
            self._storage_obj.set_trial_user_attr(storage_id, ATTR_N_PARAMS, n_params)
            if self._max_params is not None and CONSTRAINT_BUDGET not in trial.constraints:
                optuna.trial.Trial(self.study, storage_id).set_constraint(CONSTRAINT_BUDGET, n_params - self._max_params)
            if self._max_params is not None and n_params > self._max_params:
                self._storage_obj.set_trial_user_attr(storage_id, ATTR_INFEASIBLE,
                                                      f"{n_params} parameters > budget {self._max_params:.0f}")
                self.study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
                continue
            adopt.append(trial.number)
        return adopt

    def get_state(self) -> dict[str, Any]:
        return {"numbers": self._numbers, "ended": sorted(self._ended)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._numbers = {str(k): int(v) for k, v in state["numbers"].items()}
        if "ended" in state:
            self._ended = {int(n) for n in state["ended"]}
        else:  # a snapshot of an older hyperlab: every ended trial counts as seen (none is handed out again)
            known = set(self._numbers.values())
            self._ended = {t.number for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()
                           and ATTR_RAY_TRIAL in t.user_attrs and t.number not in known}
