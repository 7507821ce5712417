"""The searcher, resources and cluster file on their own (a real Optuna study; no Ray cluster needed)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import jsonschema
import optuna
import pandas as pd
import pydantic
import pytest
import ray
import yaml

from hyperlab.search import searcher as searcher_module
from hyperlab.search.searcher import COMPLETE_KEY, N_PARAMS_KEY, OPTUNA_TRIAL_KEY, StudySearcher, create_study
from hyperlab.search.space import Resources, load_search_space
from hyperlab.training import parameter_count

from conftest import REPO

TINY = REPO / "tests" / "data" / "tiny_search.yaml"


@pytest.fixture(params=["journal", "sqlite"])
def kind(request):
    """The study's storage: Optuna's journal file (the local default) or its RDB storage."""
    return request.param


def searcher(tmp_path, kind: str, seed: int = 1):
    space, base = load_search_space(TINY)
    space = space.model_copy(update={"sampler": space.sampler.model_copy(update={"seed": seed})})
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = str(tmp_path / "optuna.log") if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    create_study(space, "unit", url)
    return StudySearcher(space, base, study_name="unit", optuna_storage=url), base, space.budget.max_params


def test_suggestions_are_sized_and_over_budget_ones_never_reach_tune(tmp_path, kind):
    search, base, budget = searcher(tmp_path, kind)
    for i in range(4):  # the space's trials
        config = search.suggest(f"t{i}")
        overrides = {k: v for k, v in config.items() if not k.startswith("_")}
        n_params = parameter_count(base.with_overrides(overrides))["total"]
        assert config[N_PARAMS_KEY] == n_params <= budget
    search.wait_for_tells()  # hand-outs are recorded off Tune's loop
    trials = search.study.trials
    assert [t.state.name for t in trials].count("RUNNING") == 4  # handed to Tune
    assert {t.user_attrs["ray_trial_id"] for t in trials if t.state.name == "RUNNING"} == {f"t{i}" for i in range(4)}
    assert search.suggest("t4") == "FINISHED"  # the space asks for four
    rejected = [t for t in trials if t.state.name == "PRUNED"]
    assert rejected and all(t.user_attrs["n_params"] > budget and "infeasible" in t.user_attrs for t in rejected)
    for t in trials:  # every sized trial carries its constraint: parameters minus the budget
        assert t.constraints == {"n_params_over_budget": t.user_attrs["n_params"] - budget}
    assert not [t for t in trials if t.state.name == "FAIL"]


def test_tpe_learns_the_budget_from_over_budget_trials(tmp_path):
    """Over-budget trials go back as PRUNED with a violated constraint, which Optuna's TPE ranks below every
    feasible trial: after a start of random trials, its suggestions fall over the budget less often than
    random ones (told FAIL, as before, TPE never sees them)."""
    import optuna

    space, base = load_search_space(TINY)

    def over_budget_share(sampler: str) -> float:
        folder = tmp_path / sampler
        folder.mkdir()
        spec = space.model_copy(update={"trials": 60, "sampler": space.sampler.model_copy(
            update={"name": sampler, "seed": 5, "n_startup_trials": 10 if sampler == "tpe" else None})})
        create_study(spec, "b", str(folder / "optuna.log"))
        search = StudySearcher(spec, base, study_name="b", optuna_storage=str(folder / "optuna.log"))
        for i in range(60):
            config = search.suggest(f"t{i}")
            n_params = float(config[N_PARAMS_KEY])  # a trade-off: the larger, the better the bpc
            search.on_trial_complete(f"t{i}", {"model/n_params": n_params, "val/bpc": 1 + 300 / n_params ** 0.5,
                                               COMPLETE_KEY: 1})
        search.wait_for_tells()
        trials = search.study.get_trials(deepcopy=False)
        late = [t for t in trials if t.number >= 20 and t.user_attrs.get("duplicate_of") is None]
        return sum("infeasible" in t.user_attrs for t in late) / len(late)

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    random_share, tpe_share = over_budget_share("random"), over_budget_share("tpe")
    assert random_share > 0.3  # the budget binds on much of the space
    assert tpe_share < random_share / 2, (tpe_share, random_share)


def test_early_stopped_trials_go_back_as_pruned_and_errors_as_failed(tmp_path, kind):
    search, _, _ = searcher(tmp_path, kind)
    configs = {tid: search.suggest(tid) for tid in ("done", "stopped", "crashed")}
    result = {"model/n_params": 5000.0, "val/bpc": 4.5}
    search.on_trial_complete("done", {**result, COMPLETE_KEY: 1})
    search.on_trial_complete("stopped", result)  # ASHA's stop: a last result, but not the end
    search.on_trial_complete("crashed", None, error=True)
    search.wait_for_tells()  # told off Tune's loop
    by_number = {t.number: t for t in search.study.trials}
    state = {tid: by_number[c[OPTUNA_TRIAL_KEY]].state.name for tid, c in configs.items()}
    assert state == {"done": "COMPLETE", "stopped": "PRUNED", "crashed": "FAIL"}
    assert by_number[configs["done"][OPTUNA_TRIAL_KEY]].values == [5000.0, 4.5]
    assert [t.values for t in search.study.best_trials] == [[5000.0, 4.5]]  # the front: complete only
    assert search.study.metric_names == ["model/n_params", "val/bpc"]


def test_a_trial_told_already_is_left_as_it_is(tmp_path, kind):
    """A resumed trial that reports its end again (from its final checkpoint) does not tell Optuna twice."""
    search, _, _ = searcher(tmp_path, kind)
    config = search.suggest("a")
    search.on_trial_complete("a", {"model/n_params": 1.0, "val/bpc": 2.0, COMPLETE_KEY: 1})
    search._numbers["a2"] = config[OPTUNA_TRIAL_KEY]  # the same trial, restarted under another Tune id
    search.on_trial_complete("a2", {"model/n_params": 1.0, "val/bpc": 3.0, COMPLETE_KEY: 1})
    search.wait_for_tells()
    assert search.study.trials[config[OPTUNA_TRIAL_KEY]].values == [1.0, 2.0]


def test_after_sigterm_the_study_takes_no_more_tells_and_the_trial_is_adopted_on_resume(tmp_path, kind):
    """A SIGTERM'd driver's Tune loop runs on while the record closes: a trial that ends then must not be
    told (its end no longer reaches MLflow), so the resumed search adopts it and reports its end there."""
    search, _, _ = searcher(tmp_path, kind)
    ended, going = search.suggest("ended"), search.suggest("going")
    search.on_trial_complete("ended", {"model/n_params": 1.0, "val/bpc": 2.0, COMPLETE_KEY: 1})
    search.wait_for_tells()
    try:
        searcher_module.seal_studies()
        search.on_trial_complete("going", {"model/n_params": 3.0, "val/bpc": 4.0, COMPLETE_KEY: 1})
        search.wait_for_tells()
        asked_ahead = search.suggest("next")  # asked before the seal: handed to Tune, not recorded as such
        search.wait_for_tells()
        assert search.suggest("after") == "FINISHED"  # nothing more is asked
    finally:
        searcher_module._SEALED.clear()
    trials = {t.number: t for t in search.study.trials}
    assert trials[ended[OPTUNA_TRIAL_KEY]].state.name == "COMPLETE" and trials[going[OPTUNA_TRIAL_KEY]].state.name == "RUNNING"
    assert "ray_trial_id" not in trials[asked_ahead[OPTUNA_TRIAL_KEY]].user_attrs
    assert len(trials) == asked_ahead[OPTUNA_TRIAL_KEY] + 1
    resumed = StudySearcher(search._space, search._base_config, study_name="unit", optuna_storage=search._url)
    resumed._numbers = {"ended": ended[OPTUNA_TRIAL_KEY]}  # Tune's snapshot knew the first trial only
    assert resumed.orphans() == [going[OPTUNA_TRIAL_KEY], asked_ahead[OPTUNA_TRIAL_KEY]]


def test_a_hand_out_the_seal_cut_off_is_recorded_on_resume_not_adopted_again(tmp_path, kind):
    """SIGTERM seals the study between a hand-out and its record, and Tune's last snapshot holds that trial:
    the resumed searcher records the hand-out under Tune's id, so Tune runs it once (its own restored trial)
    and it counts as handed out (the search's end needs every handed-out trial ended)."""
    search, _, _ = searcher(tmp_path, kind)
    first, second = search.suggest("first"), search.suggest("second")
    search.wait_for_tells()
    try:
        searcher_module.seal_studies()
        cut = search.suggest("cut")  # handed to Tune; its record never made
        search.wait_for_tells()
    finally:
        searcher_module._SEALED.clear()
    snapshot = tmp_path / "searcher-state.json"
    search.save(str(snapshot))  # Tune's snapshot after the hand-out
    number = cut[OPTUNA_TRIAL_KEY]
    assert "ray_trial_id" not in {t.number: t for t in search.study.trials}[number].user_attrs
    resumed = StudySearcher(search._space, search._base_config, study_name="unit", optuna_storage=search._url)
    resumed.restore(str(snapshot))
    assert {t.number: t for t in resumed.study.trials}[number].user_attrs["ray_trial_id"] == "cut"
    assert number not in resumed._adopt  # Tune restores it: not handed out a second time
    fresh = resumed.suggest("fourth")
    assert fresh[OPTUNA_TRIAL_KEY] not in (first[OPTUNA_TRIAL_KEY], second[OPTUNA_TRIAL_KEY], number)


def test_suggestions_made_after_the_last_snapshot_are_adopted_not_asked_again(tmp_path, kind):
    """What a driver killed between Ray's snapshots leaves: Tune's saved state knows trials a, b; c was
    asked (and handed to Tune) after, and the one after c asked ahead. A searcher restored from that state
    hands c out again, with its number and parameters, then the one asked ahead, before asking Optuna for
    anything new."""
    search, _, _ = searcher(tmp_path, kind)
    a, b = search.suggest("a"), search.suggest("b")
    snapshot = tmp_path / "searcher-state.json"
    search.save(str(snapshot))
    c = search.suggest("c")
    search.wait_for_tells()
    ahead = max(t.number for t in search.study.trials)
    restored, _, _ = searcher(tmp_path, kind)
    restored.restore(str(snapshot))
    assert restored.orphans() == [c[OPTUNA_TRIAL_KEY], ahead]
    again = restored.suggest("c-new")
    assert again == c  # same number, same parameters, same size
    fresh = restored.suggest("d")
    assert fresh[OPTUNA_TRIAL_KEY] == ahead > c[OPTUNA_TRIAL_KEY]
    numbers = [t.number for t in restored.study.trials if t.state.name == "RUNNING"]
    assert sorted(numbers) == sorted(x[OPTUNA_TRIAL_KEY] for x in (a, b, c, fresh))


def test_a_trial_asked_but_never_handed_out_is_adopted_not_asked_again(tmp_path, kind):
    """The driver stopped between Optuna's ask and the hand-out to Tune (the next suggestion is asked
    ahead, so a stop lands there often): on resume that trial is sized and handed out under its own number,
    with the parameters an uninterrupted search gives it, also when the ask itself was cut short (its
    parameters not all written)."""
    (tmp_path / "reference").mkdir()
    (tmp_path / "cut").mkdir()
    reference, _, _ = searcher(tmp_path / "reference", kind)
    expected = [reference.suggest(f"r{i}") for i in range(3)]

    search, _, _ = searcher(tmp_path, kind)
    first = search.suggest("a")
    snapshot = tmp_path / "searcher-state.json"
    search.save(str(snapshot))
    search.wait_for_tells()  # the next suggestion is asked ahead, not handed out: the driver stops here
    restored, _, _ = searcher(tmp_path, kind)
    restored.restore(str(snapshot))
    assert restored.orphans() == [expected[1][OPTUNA_TRIAL_KEY]]
    assert [first, restored.suggest("b"), restored.suggest("c")] == expected

    cut, _, _ = searcher(tmp_path / "cut", kind)
    cut.suggest("a")
    cut.save(str(tmp_path / "cut-state.json"))
    cut.wait_for_tells()
    partial = cut.study.ask()  # after the one asked ahead: killed before any parameter was written
    restored, _, _ = searcher(tmp_path / "cut", kind)
    restored.restore(str(tmp_path / "cut-state.json"))
    finished, same = restored.study.trials[partial.number], reference.study.trials[partial.number]
    assert finished.params == same.params and set(same.params) == set(reference._space.distributions())
    assert finished.state == same.state  # within the budget it is adopted; over it, told FAIL as an ask is
    adopted = [expected[1][OPTUNA_TRIAL_KEY]] + ([partial.number] if same.state.name == "RUNNING" else [])
    assert restored.orphans() == adopted


def test_trials_that_ended_after_the_last_snapshot_count_towards_the_total(tmp_path, kind):
    """Tune's saved count knows two trials; a third was handed out and ended after the snapshot. With four
    trials asked for, the restored searcher hands the third out again (its end never reached Tune, so its
    record may lack it: it replays from its final checkpoint, and the study is told nothing new), then
    exactly one more, then says it is finished."""
    search, _, _ = searcher(tmp_path, kind)
    space_trials = search._space.trials  # 4 in the tiny space
    first = [search.suggest(f"t{i}") for i in range(2)]
    search.on_trial_complete("t0", {"model/n_params": 1.0, "val/bpc": 3.0, COMPLETE_KEY: 1})  # Tune saw its end
    snapshot = tmp_path / "searcher-state.json"
    search.save(str(snapshot))
    late = search.suggest("late")
    search.on_trial_complete("late", {"model/n_params": 1.0, "val/bpc": 2.0, COMPLETE_KEY: 1})
    search.wait_for_tells()
    ahead = max(t.number for t in search.study.trials)  # asked ahead for a fourth trial
    restored, _, _ = searcher(tmp_path, kind)
    restored.restore(str(snapshot))
    assert restored.orphans() == [late[OPTUNA_TRIAL_KEY], ahead]  # not t0, whose end Tune's snapshot holds
    again = restored.suggest("late-again")
    assert again == late
    restored.on_trial_complete("late-again", {"model/n_params": 1.0, "val/bpc": 2.0, COMPLETE_KEY: 1})
    more = restored.suggest("new")
    assert more[OPTUNA_TRIAL_KEY] == ahead not in {c[OPTUNA_TRIAL_KEY] for c in (*first, late)}
    assert restored.suggest("one-too-many") == "FINISHED" and space_trials == 4
    restored.wait_for_tells()
    told = restored.study.trials[late[OPTUNA_TRIAL_KEY]]
    assert told.state.name == "COMPLETE" and told.values == [1.0, 2.0] and told.user_attrs["ray_trial_id"] == "late"
    # a snapshot of an older hyperlab (no "ended"): every ended trial counts as seen, none is handed out again
    old = tmp_path / "old-state.json"
    old.write_text(json.dumps({"numbers": json.loads(snapshot.read_text())["numbers"]}))
    again, _, _ = searcher(tmp_path, kind)
    again.restore(str(old))
    assert again.orphans() == [ahead]  # the one still running is, as ever; the late one, ended, is not


def test_suggestions_depend_on_the_seed_and_the_trial_number_only(tmp_path, kind):
    """The same seed gives the same trials in a fresh study, whatever the driver did in between (here: a
    second searcher object, as a resumed driver makes)."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first, _, _ = searcher(tmp_path / "one", kind, seed=3)
    second, _, _ = searcher(tmp_path / "two", kind, seed=3)
    made = [first.suggest(f"x{i}") for i in range(4)]
    second_half = [second.suggest(f"y{i}") for i in range(2)]
    second.wait_for_tells()  # the driver stops (a resumed one never runs beside it: the lease)
    other, _, _ = searcher(tmp_path / "two", kind, seed=3)  # a new searcher on the same study continues it
    second_half += [other.suggest(f"z{i}") for i in range(2)]
    assert second_half == made


def test_resources_grow_with_parameter_count():
    resources = Resources(cpu=2, gpu=0.25, gpu_per_million_params=0.1, max_gpu=1)
    assert resources.for_params(0) == {"CPU": 2, "GPU": 0.25}
    assert resources.for_params(5_000_000) == {"CPU": 2, "GPU": 0.75}
    assert resources.for_params(50_000_000) == {"CPU": 2, "GPU": 1}
    assert Resources().for_params(10**9) == {"CPU": 1, "GPU": 0.0}


def test_a_gpu_share_above_one_is_whole_gpus():
    """Ray places a fraction within one GPU only: 1.2 would never be scheduled, so it becomes 2."""
    resources = Resources(gpu=0.5, gpu_per_million_params=0.1, max_gpu=4)
    assert resources.for_params(7_000_000) == {"CPU": 1, "GPU": 2.0}   # 1.2 -> 2
    assert resources.for_params(5_000_000) == {"CPU": 1, "GPU": 1.0}
    assert resources.for_params(10**9) == {"CPU": 1, "GPU": 4.0}       # capped
    for bad in ({"gpu": 1.5}, {"max_gpu": 2.5}):
        with pytest.raises(pydantic.ValidationError, match="whole number of GPUs"):
            Resources(**bad)


def test_cluster_file_matches_rays_schema_and_holds_on_a_cluster():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    schema = json.loads((Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    assert workers["node_config"]["IamInstanceProfile"]  # workers write checkpoints to S3 too
    setup = " ".join(config["setup_commands"])
    assert f'"ray[default,tune]=={ray.__version__}"' in setup  # the version hyperlab is tested on
    assert ">>" not in " ".join(config["setup_commands"] + config["head_setup_commands"])  # repeatable setup
    assert {"**/hyperlab-runs", "**/.git"} <= set(config["rsync_exclude"])  # no results synced to nodes
    head = " ".join(config["head_start_ray_commands"])
    assert "mlflow server --host 127.0.0.1" in head and "postgresql://" in head  # loopback; a real database
    assert "HYPERLAB_OPTUNA_STORAGE=postgresql://" in head and "HYPERLAB_STORAGE=s3://" in head
    assert "kill $(cat $pid)" in head  # a restarted cluster restarts its servers, not a second copy


def _trial(number: int):
    from types import SimpleNamespace

    return SimpleNamespace(trial_id=f"tune-{number}-{id(object())}", config={OPTUNA_TRIAL_KEY: number})


def test_early_stopping_rungs_survive_a_new_scheduler(tmp_path):
    """What a resumed driver sees: a fresh scheduler object over the same state file decides as the
    old one would have. Trials are known by their Optuna number (Tune's ids change on adoption)."""
    from hyperlab.search.scheduler import PersistentASHA
    from hyperlab.search.space import EarlyStopping

    rule = EarlyStopping(metric="val/bpc", grace_period=1, reduction_factor=2)
    path = str(tmp_path / "early_stopping.json")
    first = PersistentASHA(rule, {"model/n_params": "min", "val/bpc": "min"}, max_evaluations=4, state_path=path)
    for number, bpc in zip(range(3), (2.0, 1.5, 1.6)):
        assert first.on_trial_result(None, _trial(number), {"evaluation": 1, "val/bpc": bpc}) == "CONTINUE"

    second = PersistentASHA(rule, {"model/n_params": "min", "val/bpc": "min"}, max_evaluations=4, state_path=path)
    # the rung at one evaluation holds 2.0, 1.5, 1.6: the median cut-off is 1.6 (minimising)
    assert second.on_trial_result(None, _trial(3), {"evaluation": 1, "val/bpc": 1.7}) == "STOP"
    fresh = PersistentASHA(rule, {"model/n_params": "min", "val/bpc": "min"}, max_evaluations=4,
                           state_path=str(tmp_path / "other.json"))
    assert fresh.on_trial_result(None, _trial(3), {"evaluation": 1, "val/bpc": 1.7}) == "CONTINUE"
    json.loads((tmp_path / "early_stopping.json").read_text())  # plain data, no pickle


def test_a_stopped_trial_stays_stopped_after_a_crash(tmp_path):
    """A STOP decided just before the driver died: the trial (restarted from an older checkpoint under a
    new Tune id) reports that evaluation again, or a later one, and is stopped again, never let through."""
    from hyperlab.search.scheduler import PersistentASHA
    from hyperlab.search.space import EarlyStopping

    rule = EarlyStopping(metric="val/bpc", grace_period=1, reduction_factor=2)
    path = str(tmp_path / "early_stopping.json")
    before = PersistentASHA(rule, {"model/n_params": "min", "val/bpc": "min"}, max_evaluations=4, state_path=path)
    before.on_trial_result(None, _trial(0), {"evaluation": 1, "val/bpc": 1.0})
    assert before.on_trial_result(None, _trial(1), {"evaluation": 1, "val/bpc": 3.0}) == "STOP"
    after = PersistentASHA(rule, {"model/n_params": "min", "val/bpc": "min"}, max_evaluations=4, state_path=path)
    assert after.on_trial_result(None, _trial(1), {"evaluation": 1, "val/bpc": 3.0}) == "STOP"
    assert after.on_trial_result(None, _trial(1), {"evaluation": 2, "val/bpc": 0.1}) == "STOP"
    assert after.on_trial_result(None, _trial(0), {"evaluation": 1, "val/bpc": 1.0}) == "CONTINUE"  # seen


def test_rungs_by_hand():
    """Rungs at 1, 2, 4 evaluations (grace 1, factor 2, 4 evaluations). A trial reaching a rung stops when
    its value is worse than the median (1 - 1/2) of the values recorded there before it."""
    from hyperlab.search.scheduler import Rungs

    rungs = Rungs(grace_period=1, reduction_factor=2, max_evaluations=4, mode="max")  # accuracy
    assert rungs.milestones == [1, 2, 4]
    # rung 1: a (nothing to compare), b >= 0.5, c = median(0.5, 0.7) = 0.6 is not below it, d < 0.6
    assert [rungs.decide(t, 1, v) for t, v in (("a", 0.5), ("b", 0.7), ("c", 0.6), ("d", 0.55))] == \
        [True, True, True, False]
    assert rungs.decide("b", 2, 0.8) and not rungs.decide("a", 2, 0.6)  # rung 2: 0.6 < 0.8
    assert rungs.decide("c", 4, 0.1)  # first at rung 4 (rung 2 was skipped): nothing to compare with
    assert not rungs.decide("d", 4, 0.99)  # stopped at rung 1: stays stopped
    assert rungs.stopped == {"d": 1, "a": 2}

    low = Rungs(grace_period=2, reduction_factor=3, max_evaluations=9, mode="min")  # bpc
    assert low.milestones == [2, 6]
    assert low.decide("x", 1, 9.0)  # before the first rung: always on
    assert [low.decide(t, 2, v) for t, v in (("x", 2.0), ("y", 1.0), ("z", 3.0))] == [True, True, False]


def test_pareto_order_by_hand():
    """Non-dominated fronts, then crowding distance (extremes infinite), then the vector, then arrival."""
    from hyperlab.search.scheduler import pareto_order

    # A(1,5) B(2,3) C(3,1) D(2,4) E(4,4): front 0 is A, B, C (B's distance 1 + 1 = 2, A and C infinite,
    # A's vector first); D is dominated by B only; E by B and D
    assert pareto_order([(1, 5), (2, 3), (3, 1), (2, 4), (4, 4)]) == [0, 2, 1, 3, 4]
    # duplicates: F = G = (2, 2) and H(1, 3) dominate none of each other; all three are extremes of some
    # objective, so all infinite: by vector, then by arrival (F before G)
    assert pareto_order([(2, 2), (2, 2), (1, 3)]) == [2, 0, 1]
    # three objectives: S(2,2,2) is dominated by Q(1,2,1) only
    assert pareto_order([(1, 1, 3), (1, 2, 1), (2, 1, 1), (2, 2, 2)]) == [0, 1, 2, 3]
    # one front of four: the ends infinite; (2,4): (3-1)/4 + (5-3)/4 = 1, (3,3): (5-2)/4 + (4-1)/4 = 1.5
    assert pareto_order([(1, 5), (2, 4), (3, 3), (5, 1)]) == [0, 3, 2, 1]


def test_moasha_rungs_by_hand():
    """Rungs at 1, 2, 4 evaluations (grace 1, factor 2). A trial continues if it is in the best
    ceil(n/2) of the n at its rung (itself included) in Pareto order, or if nothing there dominates it and
    it is best there in some objective; single-metric ASHA on the same values stops the small model."""
    from hyperlab.search.scheduler import ParetoRungs, Rungs

    rungs = ParetoRungs(grace_period=1, reduction_factor=2, max_evaluations=4, modes=["min", "min"])
    assert rungs.milestones == [1, 2, 4]
    steps = [("a", (100, 3.0)),   # first: continues
             ("b", (1000, 2.0)),  # order [a, b], quota 1; on the front, best bpc: continues
             ("c", (1000, 2.5)),  # dominated by b, order [a, b, c], quota 2: stops
             ("d", (50, 3.5)),    # the smallest: front [d, b, a] (d, b infinite), quota 2: continues
             ("e", (50, 4.0))]    # as small as d but worse: dominated, 4th of 5 ([d, b, a, e, c]), quota 3
    assert [rungs.decide(t, 1, v) for t, v in steps] == [True, True, False, True, False]
    assert rungs.stopped == {"c": 1, "e": 1}
    assert rungs.decide("b", 2, (1000, 1.9)) and rungs.decide("d", 2, (50, 3.4))  # d before b by vector
    assert not rungs.decide("e", 4, (50, 0.1))  # stopped: stays stopped
    assert rungs.decide("d", 1, (50, 9.0))  # recorded at that rung already: not judged again

    asha = Rungs(grace_period=1, reduction_factor=2, max_evaluations=4, mode="min")  # on bpc alone
    # c = median(3, 2) is not worse than it; d and e are worse than the median of those before them
    assert [asha.decide(t, 1, v[1]) for t, v in steps] == [True, True, True, False, False]

    accuracy = ParetoRungs(grace_period=1, reduction_factor=2, max_evaluations=4, modes=["min", "max"])
    assert [accuracy.decide(t, 1, v) for t, v in (("x", (10, 0.5)), ("y", (20, 0.9)), ("z", (30, 0.8)),
                                                  ("w", (5, 0.1)))] == [True, True, False, True]


def test_moasha_rungs_survive_a_new_scheduler(tmp_path):
    """A fresh MO-ASHA scheduler over the state file decides as the old one; the file is plain data."""
    from hyperlab.search.scheduler import PersistentASHA
    from hyperlab.search.space import EarlyStopping

    rule = EarlyStopping(rule="moasha", grace_period=1, reduction_factor=2)
    objectives = {"model/n_params": "min", "val/bpc": "min"}
    path = str(tmp_path / "early_stopping.json")
    first = PersistentASHA(rule, objectives, max_evaluations=4, state_path=path)
    for number, (n, bpc) in enumerate(((100, 3.0), (1000, 2.0))):
        result = {"evaluation": 1, "model/n_params": n, "val/bpc": bpc}
        assert first.on_trial_result(None, _trial(number), result) == "CONTINUE"
    result = {"evaluation": 1, "model/n_params": 1000, "val/bpc": 2.5}  # dominated by trial 1
    second = PersistentASHA(rule, objectives, max_evaluations=4, state_path=path)
    assert second.on_trial_result(None, _trial(2), result) == "STOP"
    fresh = PersistentASHA(rule, objectives, max_evaluations=4, state_path=str(tmp_path / "other.json"))
    assert fresh.on_trial_result(None, _trial(2), result) == "CONTINUE"
    state = json.loads((tmp_path / "early_stopping.json").read_text())
    assert state["rule"] == "moasha" and state["recorded"][0] == {"0": [100.0, 3.0], "1": [1000.0, 2.0],
                                                                  "2": [1000.0, 2.5]}
    single = PersistentASHA(rule, {"val/bpc": "min"}, max_evaluations=4, state_path=str(tmp_path / "one.json"))
    assert [single.on_trial_result(None, _trial(n), {"evaluation": 1, "val/bpc": v})
            for n, v in enumerate((2.0, 1.0, 3.0))] == ["CONTINUE", "CONTINUE", "STOP"]  # one objective: its order
    asha = PersistentASHA(EarlyStopping(rule="asha", metric="val/bpc"), objectives, 4, path)
    with pytest.raises(RuntimeError, match="unreadable early-stopping state"):  # another rule's file
        asha.on_trial_result(None, _trial(3), result)


def test_the_progress_line_estimates_the_time_left_from_trials_ended_since_the_driver_started(monkeypatch):
    from hyperlab.search import callback

    progress = callback.ProgressCallback(total=10, name="s")
    progress._started, progress._done_at_start = 1000.0, 2  # resumed with 2 trials already ended
    monkeypatch.setattr(callback.time, "monotonic", lambda: 1030.0)
    assert progress._eta(2) == "left: estimating"  # none ended here yet
    assert progress._eta(5) == "left: about 0:00:50"  # 3 ended in 30 s: 5 more take 50 s
    assert progress._eta(3) == "left: about 0:03:30"  # 1 in 30 s: 7 more take 210 s
    assert progress._eta(10) == ""


def test_front_and_knee_tags_follow_the_front_as_trials_end(mlflow_store):
    """The reporter tags complete trials' runs as ``hyperlab pareto`` reads the front, also where the knee
    is a tie (a concave front: both ends are as far from the chord as any point) and as the front moves."""
    from mlflow import MlflowClient

    from hyperlab.analysis.report import front_table
    from hyperlab.metrics import COMPLETE
    from hyperlab.search.report import SearchReporter
    from hyperlab.tracking import layout, load_search
    from hyperlab.tracking.writer import SearchWriter

    objectives = {"model/n_params": "min", "val/bpc": "min"}
    writer = SearchWriter(mlflow_store, "tags", objectives)
    writer.start({}, {}, {})
    reporter = SearchReporter(writer, objectives, every_s=3600)
    client = MlflowClient(mlflow_store)

    def end(number, n_params, bpc):
        writer.start_trial(number, f"r{number}", {"model.n_z": number}, {})
        writer.log_metrics(number, {"model/n_params": n_params, "val/bpc": bpc, "train/loss": bpc}, step=10)
        writer.end_trial(number, COMPLETE, "completed")
        reporter.trial_ended(number, {"model.n_z": number}, {"model/n_params": n_params, "val/bpc": bpc}, COMPLETE)
        writer.flush()
        return {int(r.data.tags[layout.TAG_OPTUNA_TRIAL]): (r.data.tags[layout.TAG_FRONT], r.data.tags[layout.TAG_KNEE])
                for r in writer.trial_runs()}

    end(0, 4000, 1.5)
    end(1, 1000, 2.0)
    tags = end(2, 2000, 1.95)  # concave: the knee is a tie between the ends
    expected = front_table(load_search("tags", mlflow_store), objectives)
    assert tags == {n: ("1", str(int(n == int(expected.loc[expected["knee"], "optuna_trial"].iloc[0]))))
                    for n in (0, 1, 2)}
    tags = end(3, 1500, 1.6)  # dominates trial 2 and becomes the knee
    assert tags == {0: ("1", "0"), 1: ("1", "0"), 2: ("0", "0"), 3: ("1", "1")}
    assert client.get_run(writer.run_id(2)).data.tags[layout.TAG_FRONT] == "0"


def test_the_outbox_runs_calls_in_order_and_none_after_its_close():
    from hyperlab.tracking.outbox import Outbox

    done, sent = [], []
    outbox = Outbox(on_idle=lambda: sent.append(list(done)), idle_every_s=3600)
    for i in range(3):
        outbox.submit(done.append, i)
    assert outbox.close(30, lambda: done.append("last"))
    assert done == [0, 1, 2, "last"] and sent[-1] == done  # what the calls buffered was sent at the close
    outbox.submit(done.append, 3)  # a thread that had not seen the end: dropped, never run
    assert outbox.close(30, lambda: done.append("again")) and outbox.pending == 0
    assert done == [0, 1, 2, "last"]


def test_a_trial_starting_while_the_record_closes_is_never_left_running(mlflow_store, tmp_path):
    """SIGTERM closes the record from its own thread while Tune's loop may still start a trial: a start
    queued before the close is closed KILLED with the rest; one that comes after it makes no run."""
    from types import SimpleNamespace

    from hyperlab.search.callback import SearchRecorder
    from hyperlab.tracking import layout

    recorder = SearchRecorder(mlflow_store, "closing", {"model/n_params": "min", "val/bpc": "min"}, total=3,
                              experiment_path=str(tmp_path / "ray"))
    recorder.start(tags={}, params={}, artifacts={}, resumed=False)

    def trial(number):
        return SimpleNamespace(trial_id=f"t{number}", config={OPTUNA_TRIAL_KEY: number, N_PARAMS_KEY: 100,
                                                              "model.n_z": number})

    recorder.trial_started(trial(0))
    recorder.trial_result(trial(0), {"step": 10, "val/bpc": 2.0, "model/n_params": 100})
    recorder.trial_started(trial(1))  # still queued when the close comes
    close_open_trials = recorder.writer.close_open_trials

    def tune_starts_one_more_meanwhile():  # Tune's loop, in its own thread, while the record closes
        loop = threading.Thread(target=recorder.trial_started, args=(trial(2),))
        loop.start()
        loop.join()
        return close_open_trials()

    recorder.writer.close_open_trials = tune_starts_one_more_meanwhile
    assert recorder.finish(complete=False)
    recorder.trial_started(trial(3))  # after the close
    runs = recorder.writer.trial_runs()
    assert sorted((int(r.data.tags[layout.TAG_OPTUNA_TRIAL]), r.info.status, r.data.tags.get(layout.TAG_FIDELITY))
                  for r in runs) == [(0, "KILLED", "partial"), (1, "KILLED", "partial")]
    assert recorder.writer.client.get_run(recorder.writer.parent_id).info.status == "KILLED"


@pytest.mark.parametrize("first", [True, False])
def test_the_first_end_of_the_record_is_its_end(mlflow_store, tmp_path, first):
    """A SIGTERM as the search ends FINISHED (or a second close of a KILLED one) changes nothing: the
    record keeps the first end, and the recorder says which it was."""
    from types import SimpleNamespace

    from hyperlab.metrics import COMPLETE
    from hyperlab.search.callback import SearchRecorder

    recorder = SearchRecorder(mlflow_store, f"ends-{first}", {"model/n_params": "min", "val/bpc": "min"}, total=1,
                              experiment_path=str(tmp_path / "ray"))
    recorder.start(tags={}, params={}, artifacts={}, resumed=False)
    trial = SimpleNamespace(trial_id="t0", config={OPTUNA_TRIAL_KEY: 0, N_PARAMS_KEY: 100, "model.n_z": 1},
                            last_result={"val/bpc": 2.0, "model/n_params": 100.0, COMPLETE_KEY: 1})
    recorder.trial_started(trial)
    if first:
        recorder.trial_ended(trial, COMPLETE, "completed")
    assert recorder.finish(complete=first) and recorder.finish(complete=not first)
    expected = "FINISHED" if first else "KILLED"
    assert recorder.ended == expected
    assert recorder.writer.client.get_run(recorder.writer.parent_id).info.status == expected
    [run] = recorder.writer.trial_runs()
    assert run.info.status == expected


def test_the_final_report_is_written_as_the_last_trial_ends(mlflow_store, tmp_path):
    """Figures are drawn at most once a minute, but the last trial's end draws them at once (while Tune
    stops its workers), with every trial on the front; the end of the record then draws nothing again."""
    from types import SimpleNamespace

    from hyperlab.metrics import COMPLETE
    from hyperlab.search import report
    from hyperlab.search.callback import SearchRecorder
    from hyperlab.tracking import layout

    recorder = SearchRecorder(mlflow_store, "last", {"model/n_params": "min", "val/bpc": "min"}, total=3,
                              experiment_path=str(tmp_path / "ray"))
    recorder.start(tags={}, params={}, artifacts={}, resumed=False)
    drawn = []
    draw = recorder.reporter.publish
    recorder.reporter.publish = lambda force=False: (drawn.append((recorder.reporter.ended, force)), draw(force))

    def artifacts():
        return sorted(f.path for f in recorder.writer.client.list_artifacts(recorder.writer.parent_id, layout.REPORT_DIR))

    for number, (n_params, bpc) in enumerate([(100, 2.0), (50, 2.5), (200, 1.5)]):
        trial = SimpleNamespace(trial_id=f"t{number}", config={OPTUNA_TRIAL_KEY: number, N_PARAMS_KEY: n_params,
                                                               "model.n_z": number},
                                last_result={"val/bpc": bpc, "model/n_params": float(n_params), COMPLETE_KEY: 1})
        recorder.trial_started(trial)
        recorder.trial_ended(trial, COMPLETE, "completed")
        assert recorder.outbox.flush(30)
        if number < 2:
            assert artifacts() == []  # a minute has not passed
    assert drawn == [(1, False), (2, False), (3, True)]
    assert f"{layout.REPORT_DIR}/tradeoff.png" in artifacts()
    front = recorder.writer.client.download_artifacts(recorder.writer.parent_id, f"{layout.REPORT_DIR}/front.csv",
                                                      str(tmp_path))
    assert len(Path(front).read_text().strip().splitlines()) == 1 + 3  # all three on the front
    assert report.REPORT_EVERY_S == recorder.reporter.every_s == 60.0
    assert recorder.finish(complete=True)
    assert drawn[-1] == (3, True) and not recorder.reporter._dirty  # called again, nothing left to draw


def test_a_trials_checkpoints_keep_the_latest_and_fetch_whole_or_only_the_model(tmp_path):
    from hyperlab.search.trial_store import TrialCheckpoints

    store = TrialCheckpoints(str(tmp_path / "experiment"))
    for step in (4, 8):
        checkpoint = tmp_path / "work" / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        for name in ("model.pt", "trainer.pt", "config.yaml"):
            (checkpoint / name).write_text(f"{name} {step}")
        store.publish(3, checkpoint)
    assert sorted(p.name for p in (tmp_path / "experiment" / "trials" / "00003").iterdir()) == [
        "LATEST", "checkpoint-8"]  # the older one is gone
    whole = store.fetch_latest(3, tmp_path / "whole")
    assert {p.name: p.read_text() for p in whole.iterdir()} == {
        "model.pt": "model.pt 8", "trainer.pt": "trainer.pt 8", "config.yaml": "config.yaml 8"}
    model = store.fetch_latest(3, tmp_path / "model", files=("model.pt", "config.yaml"))
    assert sorted(p.name for p in model.iterdir()) == ["config.yaml", "model.pt"]  # no trainer state copied
    assert store.fetch_latest(4, tmp_path / "none") is None


@pytest.mark.parametrize("objectives", [{"model/n_params": "min", "val/bpc": "min"},
                                        {"model/n_params": "min", "val/bpc": "min", "val/acc": "max"}],
                         ids=["two objectives", "three, one maximised"])
def test_the_incremental_front_equals_the_full_ranking_after_every_trial(mlflow_store, objectives):
    """Forty trials with many ties, ending in a random order, some partial: after each end the reporter's
    front and knee tags and its hypervolume equal what the whole table gives (``hyperlab pareto``'s ranking
    and knee, and the hypervolume of every complete trial so far), though it only ever looks at the front."""
    import numpy as np
    from mlflow import MlflowClient

    from hyperlab.analysis import search_hypervolume
    from hyperlab.analysis.pareto import pareto_front
    from hyperlab.analysis.report import front_table
    from hyperlab.metrics import COMPLETE, PARTIAL
    from hyperlab.search.report import SearchReporter
    from hyperlab.tracking import layout
    from hyperlab.tracking.writer import SearchWriter

    rng = np.random.default_rng(5)
    writer = SearchWriter(mlflow_store, "incremental", objectives)
    writer.start({}, {}, {})
    reporter = SearchReporter(writer, objectives, bounds={"model/n_params": 2000.0}, every_s=3600)
    rows = []
    for number in range(40):
        metrics = {"model/n_params": float(rng.integers(100, 1000, endpoint=False) // 100 * 100),
                   "val/bpc": float(rng.integers(10, 20)) / 10, "val/acc": float(rng.integers(0, 5)) / 10}
        fidelity = PARTIAL if number % 7 == 3 else COMPLETE
        writer.start_trial(number, f"r{number}", {"model.n_z": number}, {})
        writer.end_trial(number, fidelity, "completed")
        reporter.trial_ended(number, {"model.n_z": number}, metrics, fidelity)
        rows.append({"optuna_trial": number, "fidelity": fidelity, **metrics})

        df = pd.DataFrame(rows)
        ranks = pareto_front(df, objectives)
        expected_front = {int(df.at[i, "optuna_trial"]) for i, r in ranks.dropna().items() if r == 1}
        assert set(reporter._front) == expected_front, number
        if len(objectives) == 2:
            table = front_table(df, objectives)
            assert reporter._knee == int(table.loc[table["knee"], "optuna_trial"].iloc[0])
        assert reporter._volume == pytest.approx(search_hypervolume(df, objectives, reporter._reference), rel=1e-12)
    writer.flush()

    complete = {int(r["optuna_trial"]) for r in rows if r["fidelity"] == COMPLETE}
    tags = {int(r.data.tags[layout.TAG_OPTUNA_TRIAL]): (r.data.tags.get(layout.TAG_FRONT), r.data.tags.get(layout.TAG_KNEE))
            for r in writer.trial_runs()}
    assert {n: t[0] for n, t in tags.items() if n in complete} == {n: str(int(n in expected_front)) for n in complete}
    assert all(t == (None, None) for n, t in tags.items() if n not in complete)  # partial trials are never ranked
    series = MlflowClient(mlflow_store).get_metric_history(writer.parent_id, layout.HYPERVOLUME_METRIC)
    assert [m.step for m in series] == list(range(1, len(complete) + 1))
    assert all(a.value <= b.value for a, b in zip(series, series[1:]))


def test_a_trial_that_ended_before_the_driver_was_killed_gets_its_end_on_resume(mlflow_store, tmp_path):
    """SIGKILL after Tune saw a trial's last result (its snapshot says TERMINATED, so the resumed Tune does
    not run it again) but before the outbox wrote it: the resumed driver writes the missing evaluations
    from the trial's result.json, and its end, and the run is FINISHED with every step once."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from hyperlab.search.callback import SearchRecorder
    from hyperlab.tracking import layout

    objectives = {"model/n_params": "min", "val/bpc": "min"}
    results = [{"step": s, "val/bpc": 3.0 - s / 100, "model/n_params": 100.0, "train/loss": 1.0} for s in (10, 20, 30)]
    results[-1][COMPLETE_KEY] = 1
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
    trial = SimpleNamespace(trial_id="t0", config={OPTUNA_TRIAL_KEY: 0, N_PARAMS_KEY: 100, "model.n_z": 2},
                            status="TERMINATED", last_result=results[-1], local_path=str(trial_dir), path=None)

    killed = SearchRecorder(mlflow_store, "caught", objectives, total=1, experiment_path=str(tmp_path / "ray"))
    killed.start(tags={}, params={}, artifacts={}, resumed=False)
    killed.trial_started(trial)
    killed.trial_result(trial, results[0])
    killed.outbox.flush(30)  # ... and the driver dies here: the other results and the end never written

    resumed = SearchRecorder(mlflow_store, "caught", objectives, total=1, experiment_path=str(tmp_path / "ray"))
    resumed.start(tags={}, params={}, artifacts={}, resumed=True)
    resumed.restored([trial])  # Tune's snapshot had it ended: the restored Tune does not run it again
    assert resumed.finish(complete=True)
    [run] = resumed.writer.trial_runs()
    assert run.info.status == "FINISHED" and run.data.tags[layout.TAG_FIDELITY] == "complete"
    history = MlflowClient(mlflow_store).get_metric_history(run.info.run_id, "val/bpc")
    assert sorted((m.step, m.value) for m in history) == [(10, 2.9), (20, 2.8), (30, 2.7)]
    assert run.data.tags[layout.TAG_FRONT] == "1"

    again = SearchRecorder(mlflow_store, "caught", objectives, total=1, experiment_path=str(tmp_path / "ray"))
    again.start(tags={}, params={}, artifacts={}, resumed=True)
    again.restored([trial])  # its end is recorded: nothing is written twice
    assert again.finish(complete=True)
    assert len(MlflowClient(mlflow_store).get_metric_history(run.info.run_id, "val/bpc")) == 3


def test_a_trial_that_failed_after_the_last_snapshot_has_its_run_ended_on_resume(mlflow_store, tmp_path):
    """SIGKILL after a trial handed out since Ray's last snapshot failed and the study was told FAIL, before
    its end reached MLflow: Tune's restored state does not hold it (nothing runs it again), so the resumed
    driver ends its run FAILED; a failed trial Tune does hold (it runs it again), and one ended before, are
    left to Tune."""
    from types import SimpleNamespace

    from hyperlab.search.callback import SearchRecorder
    from hyperlab.tracking import layout

    objectives = {"model/n_params": "min", "val/bpc": "min"}
    trials = [SimpleNamespace(trial_id=f"t{n}", config={OPTUNA_TRIAL_KEY: n, N_PARAMS_KEY: 100, "model.n_z": n + 1},
                              status="RUNNING", last_result={}, local_path=str(tmp_path), path=None) for n in range(3)]
    killed = SearchRecorder(mlflow_store, "failed", objectives, total=3, experiment_path=str(tmp_path / "ray"))
    killed.start(tags={}, params={}, artifacts={}, resumed=False)
    for trial in trials:
        killed.trial_started(trial)
        killed.trial_result(trial, {"step": 10, "val/bpc": 3.0, "model/n_params": 100.0})
    killed.outbox.flush(30)  # ... the driver dies: every run RUNNING; the study holds 0 and 1 FAIL

    resumed = SearchRecorder(mlflow_store, "failed", objectives, total=3, experiment_path=str(tmp_path / "ray"))
    resumed.failed_in_study = {0, 1}
    resumed.start(tags={}, params={}, artifacts={}, resumed=True)
    resumed.restored([trials[1], trials[2]])  # the snapshot holds 1 and 2 (Tune runs them again), not 0
    resumed.outbox.flush(30)
    status = {int(r.data.tags[layout.TAG_OPTUNA_TRIAL]): (r.info.status, r.data.tags.get(layout.TAG_FIDELITY))
              for r in resumed.writer.trial_runs()}
    assert status == {0: ("FAILED", "failed"), 1: ("RUNNING", None), 2: ("RUNNING", None)}
    assert resumed.errors == 1


def test_trials_tune_saw_end_but_the_study_holds_running_are_told_at_the_end(tmp_path, kind):
    """A kill between Tune's snapshot of trials' ends and the tells: the study is told from Tune's record
    (complete with its objectives, stopped early as PRUNED); trials it had told already, and ones Tune did
    not see end, are left as they are."""
    from hyperlab.search.searcher import tell_ended

    search, _, _ = searcher(tmp_path, kind)
    numbers = [search.suggest(f"t{i}")[OPTUNA_TRIAL_KEY] for i in range(4)]
    search.on_trial_complete("t0", {"model/n_params": 5.0, "val/bpc": 1.0, COMPLETE_KEY: 1})
    search.wait_for_tells()
    ended = {numbers[0]: ("TERMINATED", {"model/n_params": 9.0, "val/bpc": 9.0, COMPLETE_KEY: 1}),
             numbers[1]: ("TERMINATED", {"model/n_params": 7.0, "val/bpc": 2.5, COMPLETE_KEY: 1}),
             numbers[2]: ("TERMINATED", {"model/n_params": 7.0, "val/bpc": 3.0}),
             numbers[3] + 100: ("ERROR", {})}  # not the study's
    assert tell_ended("unit", search._url, ["model/n_params", "val/bpc"], ended) == 2
    states = {t.number: (t.state.name, t.values) for t in search.study.trials}
    assert states[numbers[0]] == ("COMPLETE", [5.0, 1.0])  # told before: kept
    assert states[numbers[1]] == ("COMPLETE", [7.0, 2.5])
    assert states[numbers[2]] == ("PRUNED", None)
    assert states[numbers[3]] == ("RUNNING", None)  # Tune did not see it end


def test_a_trials_end_sends_its_own_run_in_one_batch_and_leaves_the_others_buffered(mlflow_store, monkeypatch):
    """A trial's end is one batch of its run (metrics, params, tags) and its end; the other trials' buffered
    results wait for the next flush of all, not one batch per run at every end."""
    from mlflow import MlflowClient

    from hyperlab.metrics import COMPLETE
    from hyperlab.tracking import mlflow_sql
    from hyperlab.tracking.writer import SearchWriter

    writer = SearchWriter(mlflow_store, "batches", {"model/n_params": "min", "val/bpc": "min"})
    writer.start({}, {}, {})
    assert isinstance(writer._calls, mlflow_sql.RunWriter)  # a sqlite store: written with SQL
    batches = []
    monkeypatch.setattr(writer._calls, "log_batch", lambda run_id, *a, _send=writer._calls.log_batch, **k: (
        batches.append(run_id), _send(run_id, *a, **k))[1])
    for number in (0, 1):
        writer.start_trial(number, f"r{number}", {"model.n_z": number + 1}, {})
        for step in (10, 20):
            writer.log_metrics(number, {"val/bpc": 2.0 / step, "train/loss": 1.0, "model/n_params": 10.0}, step)
    writer.end_trial(0, COMPLETE, "completed")
    assert batches == [writer.run_id(0)]
    client = MlflowClient(mlflow_store)
    ended, going = client.get_run(writer.run_id(0)), client.get_run(writer.run_id(1))
    assert ended.info.status == "FINISHED" and ended.data.params == {"model.n_z": "1"}
    assert [m.step for m in client.get_metric_history(ended.info.run_id, "val/bpc")] == [10, 20]
    assert going.data.metrics == {}  # still buffered
    writer.flush()
    assert batches == [writer.run_id(0), writer.run_id(1)]
    assert client.get_run(writer.run_id(1)).data.metrics["val/bpc"] == 0.1


def test_a_journal_lock_dies_with_its_holder(tmp_path):
    """A driver killed while it holds the journal's lock leaves nothing for the next one to wait out: the
    kernel releases a flock with its holder's process."""
    import fcntl
    import signal
    import subprocess
    import sys
    import time

    from hyperlab.search.study_storage import FlockLock

    path = tmp_path / "optuna.log.flock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom hyperlab.search.study_storage import "
                               f"FlockLock\nFlockLock({str(path)!r}).acquire()\nprint('held', flush=True)\n"
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        probe = os.open(path, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(probe)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    lock = FlockLock(str(path))
    start = time.monotonic()
    assert lock.acquire()
    assert time.monotonic() - start < 1.0
    lock.release()


def test_two_writers_of_one_journal_lose_no_operation(tmp_path):
    """Two processes writing their own studies into one journal file: every trial of both is there, in
    order, and Optuna's own backend (its default lock, as optuna-dashboard opens it) reads them all."""
    import subprocess
    import sys

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = str(tmp_path / "optuna.log")
    script = ("import optuna, sys\nfrom hyperlab.search.study_storage import open_storage\n"
              "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
              "study = optuna.create_study(study_name=sys.argv[2], storage=open_storage(sys.argv[1]))\n"
              "for i in range(150):\n    study.tell(study.ask({'x': optuna.distributions.FloatDistribution(0, 1)}), i)\n")
    writers = [subprocess.Popen([sys.executable, "-c", script, journal, name]) for name in ("a", "b")]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    storage = JournalStorage(JournalFileBackend(journal))
    for name in ("a", "b"):
        trials = optuna.load_study(study_name=name, storage=storage).trials
        assert [t.number for t in trials] == list(range(150))
        assert [t.value for t in trials] == [float(i) for i in range(150)]
        assert all(t.state.name == "COMPLETE" for t in trials)


def test_a_journal_writer_killed_right_after_a_tell_loses_nothing(tmp_path):
    """The journal's lines are not synced to the disk, but they are written: a driver SIGKILLed the moment
    its last tell returns (no exit handler, no buffer flushed) leaves every operation for Optuna's own
    backend to read."""
    import subprocess
    import sys

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = str(tmp_path / "optuna.log")
    script = ("import optuna, os, signal, sys\nfrom hyperlab.search.study_storage import open_storage\n"
              "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
              "study = optuna.create_study(study_name='k', storage=open_storage(sys.argv[1]))\n"
              "for i in range(40):\n    study.tell(study.ask({'x': optuna.distributions.FloatDistribution(0, 1)}), i)\n"
              "trial = study.ask({'x': optuna.distributions.FloatDistribution(0, 1)})\n"
              "trial.set_user_attr('last', 1)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    writer = subprocess.run([sys.executable, "-c", script, journal], timeout=300)
    assert writer.returncode == -9
    trials = optuna.load_study(study_name="k", storage=JournalStorage(JournalFileBackend(journal))).trials
    assert [t.number for t in trials] == list(range(41))
    assert [t.value for t in trials[:40]] == [float(i) for i in range(40)]
    assert trials[40].state.name == "RUNNING" and trials[40].user_attrs == {"last": 1} and "x" in trials[40].params


def test_a_configuration_is_trained_once(tmp_path, monkeypatch):
    """Two configurations in the space, three trials asked for: the random sampler suggests each again and
    again; the copies are told FAIL pointing at the trial that trains it, never handed to Tune, and after
    the two configurations the search runs out of new ones (here after 30 copies in a row)."""
    monkeypatch.setattr(searcher_module, "MAX_UNTRAINED_IN_A_ROW", 30)
    space, base = load_search_space(TINY)
    from hyperlab.search.space import ChoiceParam

    space = space.model_copy(update={"trials": 3, "budget": None, "space": {
        "model.hidden_size": ChoiceParam(type="choice", values=[8, 12])}})
    create_study(space, "d", str(tmp_path / "optuna.log"))
    search = StudySearcher(space, base, study_name="d", optuna_storage=str(tmp_path / "optuna.log"))
    handed = [search.suggest("a"), search.suggest("b")]
    assert sorted(c["model.hidden_size"] for c in handed) == [8, 12]
    assert search.suggest("c") == "FINISHED"
    search.wait_for_tells()
    trials = search.study.trials
    by_number = {c[OPTUNA_TRIAL_KEY]: c["model.hidden_size"] for c in handed}
    copies = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(copies) == len(trials) - 2 >= 30
    for t in copies:
        assert t.state.name == "FAIL" and by_number[t.user_attrs["duplicate_of"]] == t.params["model.hidden_size"]
    for tid in ("a", "b"):
        search.on_trial_complete(tid, {"model/n_params": 1.0, "val/bpc": 2.0, COMPLETE_KEY: 1})
    search.wait_for_tells()
    assert "exhausted" in search.study.user_attrs  # the search ends with the two it has, not as interrupted
    assert searcher_module.all_trials_ended("d", str(tmp_path / "optuna.log"), 3)
    resumed = StudySearcher(space, base, study_name="d", optuna_storage=str(tmp_path / "optuna.log"))
    assert resumed.suggest("again") == "FINISHED"  # a resumed search asks nothing more
    assert len(resumed.study.trials) == len(trials)


def _generations(sampler_class, told: list[str], population: int = 4) -> tuple[optuna.Study, list[int]]:
    """A study of ``told`` trials (C complete, P stopped early, B over the budget, as hyperlab tells them)
    asked one after the other with ``sampler_class``; the generation each trial was asked in."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"])
    x = optuna.distributions.FloatDistribution(0, 1)
    for number, fate in enumerate(told):
        study.sampler = sampler_class(seed=number, population_size=population)
        trial = study.ask({"x": x})
        if fate == "C":
            study.tell(trial, [number, -number])  # every complete trial is on one front
        else:
            if fate == "B":
                trial.set_user_attr(searcher_module.ATTR_INFEASIBLE, "over")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    key = sampler_class._GENERATION_KEY
    return study, [t.system_attrs[key] for t in study.trials]


def test_nsga2_generations_advance_on_trials_stopped_early():
    """Optuna's NSGA-II counts only complete trials towards a generation; hyperlab's counts every trial that
    ended in training (not the over-budget ones, never trained)."""
    told = list("CPPCPPCPPCPPCPPCPP")
    _, optunas = _generations(optuna.samplers.NSGAIISampler, told)
    assert optunas == [0] * 10 + [1] * 8  # the fourth complete trial is the tenth
    _, ours = _generations(searcher_module.EarlyStoppedNSGAII, told)
    assert ours == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 2
    _, budget = _generations(searcher_module.EarlyStoppedNSGAII, list("CBBPBPCBBPC"))
    assert budget == [0] * 7 + [1] * 4  # C, P, P, C are the first generation's four
    space, _ = load_search_space(REPO / "search_spaces" / "quickstart.yaml")
    nsga2 = space.model_copy(update={"sampler": space.sampler.model_copy(update={"name": "nsga2"})})
    assert type(searcher_module.make_sampler(nsga2, 0)) is searcher_module.EarlyStoppedNSGAII


def test_nsga2_parents_are_the_elite_of_earlier_complete_trials():
    """Generation g's parents: NSGA-II's elite of the trials complete in generations before g, worked out by
    hand; a stopped trial is never a parent; with fewer than two complete trials, no parents (random)."""
    sampler_class = searcher_module.EarlyStoppedNSGAII
    study, generations = _generations(sampler_class, list("PPPC" "PCCP" "PP"), population=4)
    assert generations == [0] * 4 + [1] * 4 + [2] * 2
    sampler = sampler_class(seed=0, population_size=4)
    assert sampler.get_parent_population(study, 1) == []  # one complete trial in generation 0
    # generation 2: trials 3, 5, 6 complete, values (3,-3), (5,-5), (6,-6): one front, all three parents
    assert sorted(t.number for t in sampler.get_parent_population(study, 2)) == [3, 5, 6]
    sampler = sampler_class(seed=0, population_size=2)  # the elite of two: the front's two ends (crowding)
    assert sorted(t.number for t in sampler.select_parent(study, 2)) == [3, 6]
