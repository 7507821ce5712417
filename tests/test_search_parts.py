"""The searcher, resources and cluster file on their own (a real Optuna study; no Ray cluster needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import ray
import yaml

from hyperlab.search.searcher import COMPLETE_KEY, N_PARAMS_KEY, OPTUNA_TRIAL_KEY, BudgetedOptunaSearch
from hyperlab.search.space import Resources, load_search_space
from hyperlab.training import parameter_count

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_search.yaml"


def searcher():
    space, base = load_search_space(TINY)
    return BudgetedOptunaSearch(space, base, study_name="unit"), base, space.budget.max_params


def test_suggestions_are_sized_and_over_budget_ones_never_reach_tune():
    search, base, budget = searcher()
    for i in range(6):
        config = search.suggest(f"t{i}")
        overrides = {k: v for k, v in config.items() if not k.startswith("_")}
        n_params = parameter_count(base.with_overrides(overrides))["total"]
        assert config[N_PARAMS_KEY] == n_params <= budget
    states = [t.state.name for t in search.study.trials]
    assert states.count("RUNNING") == 6  # handed to Tune
    rejected = [t for t in search.study.trials if t.state.name == "FAIL"]
    assert len(rejected) == len(search.infeasible) > 0
    assert all(entry["n_params"] > budget for entry in search.infeasible)


def test_early_stopped_trials_go_back_as_pruned_and_errors_as_failed():
    search, _, _ = searcher()
    configs = {tid: search.suggest(tid) for tid in ("done", "stopped", "crashed")}
    result = {"model/n_params": 5000.0, "val/bpc": 4.5}
    search.on_trial_complete("done", {**result, COMPLETE_KEY: 1})
    search.on_trial_complete("stopped", result)  # ASHA's stop: a last result, but not the end
    search.on_trial_complete("crashed", None, error=True)
    by_number = {t.number: t for t in search.study.trials}
    state = {tid: by_number[c[OPTUNA_TRIAL_KEY]].state.name for tid, c in configs.items()}
    assert state == {"done": "COMPLETE", "stopped": "PRUNED", "crashed": "FAIL"}
    assert by_number[configs["done"][OPTUNA_TRIAL_KEY]].values == [5000.0, 4.5]
    assert [t.values for t in search.study.best_trials] == [[5000.0, 4.5]]  # the front: complete only


def test_resources_grow_with_parameter_count():
    resources = Resources(cpu=2, gpu=0.25, gpu_per_million_params=0.1, max_gpu=1)
    assert resources.for_params(0) == {"CPU": 2, "GPU": 0.25}
    assert resources.for_params(5_000_000) == {"CPU": 2, "GPU": 0.75}
    assert resources.for_params(50_000_000) == {"CPU": 2, "GPU": 1}
    assert Resources().for_params(10**9) == {"CPU": 1, "GPU": 0.0}


def test_cluster_file_matches_rays_schema():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    head_commands = " ".join(config["head_start_ray_commands"])
    assert "mlflow server --host 127.0.0.1" in head_commands  # reached by port-forward only
    assert "pip install" in " ".join(config["setup_commands"])


def test_early_stopping_rungs_survive_a_new_scheduler(tmp_path):
    """What a resumed driver sees: a fresh scheduler object over the same state file decides as the
    old one would have. (Trials stand in as objects with a trial_id: all the scheduler reads.)"""
    from types import SimpleNamespace

    from hyperlab.search.scheduler import PersistentASHA
    from hyperlab.search.space import EarlyStopping

    rule = EarlyStopping(metric="val/bpc", grace_period=1, reduction_factor=2)
    path = str(tmp_path / "asha_state.pkl")
    first = PersistentASHA(rule, mode="min", max_evaluations=4, state_path=path)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
    for trial, bpc in zip(trials, (2.0, 1.5, 1.6)):
        first.on_trial_add(None, trial)
        assert first.on_trial_result(None, trial, {"training_iteration": 1, "val/bpc": bpc}) == "CONTINUE"

    late = SimpleNamespace(trial_id="t3")
    second = PersistentASHA(rule, mode="min", max_evaluations=4, state_path=path)
    second.on_trial_add(None, late)
    # the rung at one evaluation holds 2.0, 1.5, 1.6: the median cut-off is 1.6 (minimising)
    assert second.on_trial_result(None, late, {"training_iteration": 1, "val/bpc": 1.7}) == "STOP"
    fresh = PersistentASHA(rule, mode="min", max_evaluations=4, state_path=str(tmp_path / "other.pkl"))
    fresh.on_trial_add(None, late)
    assert fresh.on_trial_result(None, late, {"training_iteration": 1, "val/bpc": 1.7}) == "CONTINUE"
