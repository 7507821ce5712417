"""What hyperlab's driver costs a search: the same null trainable (reports 10 results, trains nothing)
through hyperlab's search (its Optuna study in a journal file, MLflow record in sqlite, lease, reports) and
through bare Ray Tune with its OptunaSearch, side by side in one run, on one local Ray, with the same Tune
settings: once as Tune runs by default (a new worker process per trial) and once reusing workers (as
hyperlab does; Tune's own per-trial cost then nearly vanishes, and what is left is the record's).

    python benchmarks/search_overhead.py [--trials 200] [--concurrency 4] [--repeats 1] [--reuse both|yes|no]
    python benchmarks/search_overhead.py --trials 50,200 --reuse yes    # does the cost per trial stay flat?
    python benchmarks/search_overhead.py --reuse yes --pin-driver       # the driver on a core of its own
    py-spy record --gil -- python benchmarks/search_overhead.py --only hyperlab   # where the driver's time goes

Prints, for each number of trials asked for, the wall times, their ratio (target: at most 1.05; the median
of the two sides' medians, and the spread of the paired ratios) and hyperlab's extra driver CPU time (every
thread of the driver process: Tune's loop, the study's thread, the MLflow writer) per result and per trial,
which should not grow with the number of trials. On a machine with fewer cores than trials at a time the
wall time of either side varies by up to 2x from run to run; the CPU time is the steadier measure.
``--pin-driver`` (Linux) keeps the driver on core 0 and Ray's processes (its trials) on the others, as a
cluster's head runs the driver beside workers that run the trials: the driver's work then competes with
no trial for a core, and each side's wall time is steadier.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_PER_TRIAL = 10


def driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def null_trainable(config: dict) -> None:
    """Ten results of a finished trial, in hyperlab's form (the last one complete), no training."""
    from ray import tune

    from hyperlab.search.searcher import COMPLETE_KEY, N_PARAMS_KEY

    for step in range(1, RESULTS_PER_TRIAL + 1):
        metrics = {"step": step * 10, "evaluation": step, "train/loss": 1.0 / step, "val/bpc": 2.0 + 1.0 / step,
                   "model/n_params": float(config.get(N_PARAMS_KEY, 0)), "time/elapsed": 0.0}
        if step == RESULTS_PER_TRIAL:
            metrics[COMPLETE_KEY] = 1
        tune.report(metrics)


def space_file(folder: Path, trials: int, concurrency: int) -> Path:
    import yaml

    data = yaml.safe_load((REPO / "tests" / "data" / "tiny_search.yaml").read_text())
    data.update(trials=trials, concurrency=concurrency, budget=None)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_hyperlab(folder: Path, trials: int, concurrency: int, reuse: bool) -> tuple[float, float]:
    from hyperlab.search import runner

    runner.REUSE_ACTORS = reuse
    from hyperlab.search.home import resolve
    from hyperlab.search.space import load_search_space

    path = space_file(folder, trials, concurrency)
    space, base = load_search_space(path)
    home = resolve(f"overhead-{time.time_ns()}", f"sqlite:///{folder / 'mlflow.db'}", str(folder / "ray"), None,
                   None, None, False, None)
    from hyperlab.tracking.store import init_store

    init_store(home.tracking_uri)  # the store's schema, built once per store, is not the search's cost
    start, cpu = time.perf_counter(), driver_cpu()
    outcome = runner.run_search(home, space, base, path.read_text(), progress=False, trainable=null_trainable)
    elapsed, cpu = time.perf_counter() - start, driver_cpu() - cpu
    assert outcome.complete
    return elapsed, cpu


def run_bare(folder: Path, trials: int, concurrency: int, reuse: bool) -> tuple[float, float]:
    import optuna
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    from hyperlab.search.space import load_search_space

    space, _ = load_search_space(space_file(folder, trials, concurrency))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(space=space.distributions(), metric=list(space.objectives),
                            mode=list(space.objectives.values()), sampler=optuna.samplers.RandomSampler(seed=1))
    tuner = tune.Tuner(null_trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials,
                                                                   max_concurrent_trials=concurrency,
                                                                   reuse_actors=reuse),
                       run_config=tune.RunConfig(name=f"bare-{time.time_ns()}", storage_path=str(folder / "bare"),
                                                 verbose=0, callbacks=[JsonLoggerCallback()]))  # as hyperlab
    start, cpu = time.perf_counter(), driver_cpu()
    tuner.fit()
    return time.perf_counter() - start, driver_cpu() - cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", default="200", help="trials per search; several, comma-separated")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two this many times")
    parser.add_argument("--reuse", choices=("both", "yes", "no"), default="both",
                        help="with Tune's default (a new worker per trial), reusing workers, or both")
    parser.add_argument("--only", choices=("hyperlab", "bare"), help="time one side alone (for a profiler)")
    parser.add_argument("--pin-driver", action="store_true",
                        help="the driver on core 0, Ray's processes (the trials) on the other cores")
    args = parser.parse_args(argv)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from hyperlab.search import cluster

    cores = sorted(os.sched_getaffinity(0)) if args.pin_driver else []
    if args.pin_driver:
        if len(cores) < 2:
            parser.error(f"--pin-driver needs 2 cores or more; this process may use {len(cores)}")
        os.sched_setaffinity(0, cores[1:])  # what connect starts (Ray's processes, its threads) inherits this
    cluster.connect(None, args.concurrency)  # one local Ray for both, as a search starts it
    if args.pin_driver:  # then every thread of the driver, and those it starts from now on, to the first core
        for thread_id in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(thread_id), cores[:1])
    lines = []
    with tempfile.TemporaryDirectory(prefix="hyperlab-overhead-") as tmp:
        for name, run in (("bare", run_bare), ("hyperlab", run_hyperlab)):  # untimed: imports, first workers
            if args.only not in (None, name):
                continue
            (Path(tmp) / f"warm-{name}").mkdir()
            run(Path(tmp) / f"warm-{name}", args.concurrency, args.concurrency, True)
        for trials in [int(n) for n in args.trials.split(",")]:
            for reuse in {"both": (False, True), "yes": (True,), "no": (False,)}[args.reuse]:
                times, cpus = {"hyperlab": [], "bare": []}, {"hyperlab": [], "bare": []}
                for repeat in range(args.repeats):
                    for name, run in (("bare", run_bare), ("hyperlab", run_hyperlab)):
                        if args.only not in (None, name):
                            continue
                        folder = Path(tmp) / f"{name}-{trials}-{reuse}-{repeat}"
                        folder.mkdir()
                        wall, cpu = run(folder, trials, args.concurrency, reuse)
                        times[name].append(wall)
                        cpus[name].append(cpu)
                        print(f"{name:9s} {trials} trials, reuse_actors={reuse}: {wall:7.1f} s, driver CPU {cpu:6.1f} s",
                              file=sys.stderr)
                if args.only:
                    continue
                bare, ours = statistics.median(times["bare"]), statistics.median(times["hyperlab"])
                paired = sorted(h / b for h, b in zip(times["hyperlab"], times["bare"]))
                extra = statistics.median(cpus["hyperlab"]) - statistics.median(cpus["bare"])
                lines.append(f"{trials:4d} trials, reuse_actors={reuse!s:5s}: bare Ray Tune + OptunaSearch {bare:6.1f} s, "
                             f"hyperlab {ours:6.1f} s, ratio {ours / bare:.3f} (paired {paired[0]:.2f} to "
                             f"{paired[-1]:.2f}); hyperlab's extra driver CPU {extra / (trials * RESULTS_PER_TRIAL) * 1e3:.2f} "
                             f"ms per result, {extra / trials * 1e3:.1f} ms per trial")
    pinned = f", driver on core {cores[0]}, Ray on cores {','.join(map(str, cores[1:]))}" if args.pin_driver else ""
    print(f"null trials x {RESULTS_PER_TRIAL} results, concurrency {args.concurrency}{pinned}, median of {args.repeats}:")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
