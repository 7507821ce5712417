"""How much front a search finds for its compute: hyperlab with MO-ASHA, with single-metric ASHA and with
no early stopping, and Syne Tune's MOASHA on its local backend, on one real task, side by side in one run.

The task: a HyperLSTM char-LM on the text bundled with hyperlab (hidden 16 to 192, hyper 8 to 32, n_z 2
to 8: 9.6k to 267k parameters), 6 evaluations of 20 steps each; objectives parameter count and
validation bits per character. Every method samples at random (MO-ASHA in Syne Tune suggests at random too), stops at rungs
of 1, 2 and 4 evaluations with reduction factor 2 where it stops at all, and runs 2 trials at a time. A
trial's cost is the CPU-seconds it trained (one CPU times its ``time/elapsed``). The search without early
stopping starts ``--trials`` trials; the others start three times as many, which costs them at least as
much in all; per seed, every method is then measured at the compute the cheapest of them spent in all
(equal compute: what each found with the same CPU-seconds of training, counting trials in the order they
ended), from one fixed reference point (the most parameters the space allows; bits per character of a
uniform guess).

    pip install -e ".[bench]"                      # Syne Tune, for this benchmark only
    python benchmarks/search_quality.py [--seeds 0,1,2] [--trials 32] [--skip syne-tune]

Prints per method the hypervolume at equal compute (mean and spread over the seeds), the share of the
smallest-decile configurations it started that trained to the end, and last
``moasha/asha hypervolume at equal compute = X; moasha/syne-tune = Y`` (ratios of the means).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SIZE_KEYS = ("model.hidden_size", "model.hyper_size", "model.n_z")
EVALUATIONS, CONCURRENCY = 6, 2
OBJECTIVES = {"model/n_params": "min", "val/bpc": "min"}
METHODS = ("hyperlab moasha", "hyperlab asha", "hyperlab no stopping", "syne-tune moasha")
SPACE = {
    "task": "charlm", "model": "char_rnn", "objectives": OBJECTIVES,
    "fixed": {"seed": 0, "device": "cpu", "data": {"dataset": "bundled", "batch_size": 16, "seq_len": 50},
              "model": {"cell": "hyperlstm", "num_layers": 1}, "optim": {"lr": 0.003, "clip": 1.0},
              "schedule": {"steps": 20 * EVALUATIONS, "eval_every": 20, "eval_batches": 4, "test": False}},
    "space": {"model.hidden_size": {"type": "int", "low": 16, "high": 192, "log": True},
              "model.hyper_size": {"type": "int", "low": 8, "high": 32, "log": True},
              "model.n_z": {"type": "int", "low": 2, "high": 8}},
    "concurrency": CONCURRENCY, "resources": {"cpu": 1},
}
RUNGS = {"grace_period": 1, "reduction_factor": 2}


def base_config():
    from hyperlab.search.space import load_search_space

    with tempfile.TemporaryDirectory() as tmp:
        return load_search_space(_space_file(Path(tmp), 0, 4, None))[1]


def _space_file(folder: Path, seed: int, trials: int, rule: str | None) -> Path:
    import yaml

    data = {**SPACE, "sampler": {"name": "random", "seed": seed}, "trials": trials}
    if rule == "moasha":
        data["early_stopping"] = {"rule": "moasha", **RUNGS}
    elif rule == "asha":
        data["early_stopping"] = {"rule": "asha", "metric": "val/bpc", **RUNGS}
    path = folder / f"space-{rule}-{seed}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_hyperlab(folder: Path, seed: int, trials: int, rule: str | None) -> pd.DataFrame:
    """A real hyperlab search; its trials as (end order) n_params, bpc, complete, cpu_seconds."""
    import warnings

    from hyperlab.search import runner
    from hyperlab.search.home import resolve
    from hyperlab.search.space import load_search_space
    from hyperlab.tracking import load_search

    path = _space_file(folder, seed, trials, rule)
    space, base = load_search_space(path)
    name = f"quality-{rule}-{seed}"
    home = resolve(name, f"sqlite:///{folder / 'mlflow.db'}", str(folder / "ray"), None, None, None, False, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = runner.run_search(home, space, base, path.read_text(), progress=False)
    assert outcome.complete, name
    df = load_search(name, home.tracking_uri).sort_values("end_time")
    return pd.DataFrame({"n_params": df["model/n_params"], "bpc": df["val/bpc"],
                         "complete": df["fidelity"] == "complete", "cpu_seconds": df["cost/cpu_seconds"]})


def run_syne_tune(folder: Path, seed: int, trials: int) -> pd.DataFrame:
    """Syne Tune's MOASHA on its local backend (random suggestions), the same trials and rungs."""
    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend import LocalBackend
    from syne_tune.config_space import lograndint, randint
    from syne_tune.experiments import load_experiment
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

    ranges = SPACE["space"]
    config_space = {key.split(".")[-1]: (lograndint if spec.get("log") else randint)(spec["low"], spec["high"])
                    for key, spec in ranges.items()}
    scheduler = MOASHA(config_space, metrics=["n_params", "bpc"], do_minimize=True, time_attr="epoch",
                       max_t=EVALUATIONS, random_seed=seed, **RUNGS)
    os.environ["SYNETUNE_FOLDER"] = str(folder)  # its results beside the others, gone with them
    tuner = Tuner(trial_backend=LocalBackend(entry_point=str(REPO / "benchmarks" / "search_quality_trial.py")),
                  scheduler=scheduler, stop_criterion=StoppingCriterion(max_num_trials_started=trials),
                  n_workers=CONCURRENCY, sleep_time=0.5, save_tuner=False, tuner_name=f"quality-{seed}-{time.time_ns()}",
                  results_update_interval=5, print_update_interval=3600, start_jobs_without_delay=False,
                  wait_trial_completion_when_stopping=True)
    tuner.run()
    results = load_experiment(tuner.name).results
    results = results[results["trial_id"] < trials]  # it may start one more before its criterion stops it
    rows = []
    for _, trial in results.sort_values("st_tuner_time").groupby("trial_id", sort=False):
        last = trial.iloc[-1]
        rows.append({"end": last["st_tuner_time"], "n_params": last["n_params"], "bpc": last["bpc"],
                     "complete": int(trial["epoch"].max()) >= EVALUATIONS, "cpu_seconds": last["cpu_seconds"]})
    return pd.DataFrame(rows).sort_values("end").drop(columns="end")


def hypervolume_at(trials: pd.DataFrame, reference, seconds: float) -> float:
    """Of the complete trials among those that ended before the compute spent passed ``seconds``."""
    from hyperlab.analysis import search_hypervolume

    spent = trials["cpu_seconds"].fillna(0.0).cumsum()
    done = trials[(spent <= seconds * (1 + 1e-9)) & trials["complete"]]
    table = pd.DataFrame({"model/n_params": done["n_params"], "val/bpc": done["bpc"]})
    return search_hypervolume(table, OBJECTIVES, reference)


def smallest_decile_completed(trials: pd.DataFrame) -> float:
    """The share of the smallest tenth (by parameters) of the configurations started that completed."""
    smallest = trials.nsmallest(max(1, math.ceil(len(trials) / 10)), "n_params")
    return float(smallest["complete"].mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=32, help="trials the search without early stopping starts, "
                        "per seed (the others start three times as many)")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out, e.g. syne-tune")
    args = parser.parse_args(argv)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import logging

    logging.getLogger("syne_tune").setLevel(logging.WARNING)
    from hyperlab.search import cluster
    from hyperlab.search.runner import reference_bounds
    from hyperlab.search.space import load_search_space, size_range

    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in METHODS if not any(skip and skip in m for skip in args.skip.split(","))]
    with tempfile.TemporaryDirectory(prefix="hyperlab-quality-") as tmp:
        space, base = load_search_space(_space_file(Path(tmp), 0, args.trials, None))
        bounds = reference_bounds(space, base, None, size_range(space, base, None)[2])
        reference = [bounds[name] for name in OBJECTIVES]
        cluster.connect(None, CONCURRENCY)
        found: dict[str, list[dict]] = {m: [] for m in methods}
        started = time.monotonic()
        for seed in seeds:
            runs = {}
            for method in methods:
                folder = Path(tmp) / f"{method.replace(' ', '-')}-{seed}"
                folder.mkdir()
                began = time.monotonic()
                trials = args.trials if method == "hyperlab no stopping" else 3 * args.trials
                if method == "syne-tune moasha":
                    runs[method] = run_syne_tune(folder, seed, trials)
                else:
                    rule = {"hyperlab moasha": "moasha", "hyperlab asha": "asha"}.get(method)
                    runs[method] = run_hyperlab(folder, seed, trials, rule)
                print(f"seed {seed} {method:22s} {len(runs[method])} trials, {runs[method]['complete'].sum()} complete, "
                      f"{runs[method]['cpu_seconds'].sum():6.0f} CPU-s trained, {time.monotonic() - began:5.0f} s",
                      file=sys.stderr)
            equal = min(trials["cpu_seconds"].sum() for trials in runs.values())
            for method, trials in runs.items():
                found[method].append({"hv": hypervolume_at(trials, reference, equal), "small": smallest_decile_completed(trials),
                                      "compute": equal})
    computes = ", ".join(f"{row['compute']:.0f}" for row in next(iter(found.values())))
    print(f"{len(seeds)} seeds; {args.trials} trials without early stopping, {3 * args.trials} with; 2 at a time; "
          f"at equal compute ({computes} CPU-s); reference point "
          f"model/n_params={reference[0]:.0f}, val/bpc={reference[1]:.4f}; {time.monotonic() - started:.0f} s in all")
    print(f"{'method':22s} {'hypervolume at equal compute':>30s} {'smallest decile completed':>26s}")
    means = {}
    for method, rows in found.items():
        volumes = [r["hv"] for r in rows]
        means[method] = statistics.mean(volumes)
        spread = statistics.stdev(volumes) if len(volumes) > 1 else 0.0
        print(f"{method:22s} {means[method]:22.4f} ± {spread:6.4f} {statistics.mean(r['small'] for r in rows):26.2f}")
    ratio = {other: means["hyperlab moasha"] / means[other] if {"hyperlab moasha", other} <= set(means) else math.nan
             for other in ("hyperlab asha", "syne-tune moasha")}
    x, y = ratio["hyperlab asha"], ratio["syne-tune moasha"]
    print(f"moasha/asha hypervolume at equal compute = {x:.3f}; moasha/syne-tune = {y:.3f}")


if __name__ == "__main__":
    main()
