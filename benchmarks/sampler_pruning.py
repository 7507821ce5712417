"""What the samplers learn from trials that MO-ASHA stopped early, measured on a simulated search.

hyperlab's own parts, no training: its samplers (as ``make_sampler`` builds them, one per ask, seeded by
the trial's number), its MO-ASHA rung rule (``ParetoRungs``) and its hypervolume, on a closed-form
stand-in for a char-LM space (hidden size 32-1024, hyper size 16-256, n_z 4-32, learning rate; parameter
count and bits per character; bpc falls with the parameter count and off the best learning rate, and over
the evaluations, the same way for every model, so small models are worse at every rung). One trial at a
time; rungs at 1, 3 and 9 evaluations, reduction factor 3; every search spends the same compute (a total
of ``--evaluations`` evaluations). Compared, per sampler, how a stopped trial reaches it:

* ``pruned``: told PRUNED, as hyperlab does (TPE ranks it after every complete trial, with the trials
  that shape its "bad" density; Optuna's NSGA-II counts only complete trials towards a generation);
* ``ignored``: told FAIL, which TPE leaves out of its model altogether (measured for the choice; not
  what hyperlab does);
* ``nsga2`` against ``nsga2 (early-stopped)``: Optuna's NSGA-II and hyperlab's ``EarlyStoppedNSGAII``,
  whose generations advance on trials that ended, complete or stopped.

    python benchmarks/sampler_pruning.py [--seeds 10] [--evaluations 270]

Prints per variant, over the seeds: the hypervolume of the complete trials (share of the reference box:
the most parameters the space allows, bpc 5.64 of a uniform guess over 50 characters; mean and spread),
the same over the logarithm of the parameter count (from the fewest the space allows, 0, to the most, 1:
where the small models weigh as much as the large ones),
the trials completed that lie in the smallest decile of the space's sizes, and for NSGA-II the generation
reached.
"""

from __future__ import annotations

import argparse
import math
import statistics
from types import SimpleNamespace

import numpy as np
import optuna

from hyperlab.analysis.hypervolume import hypervolume
from hyperlab.search.scheduler import ParetoRungs
from hyperlab.search.searcher import make_sampler, trial_seed

D = optuna.distributions
SPACE = {"hidden": D.IntDistribution(32, 1024, log=True), "hyper": D.IntDistribution(16, 256, log=True),
         "n_z": D.IntDistribution(4, 32), "lr": D.FloatDistribution(3e-4, 3e-2, log=True)}
VOCAB, MAX_EVALUATIONS = 50, 9
REFERENCE_BPC = math.log2(VOCAB)


def n_params(p: dict) -> int:
    """A HyperLSTM char-LM's count, in closed form (LSTM, hyper LSTM, the n_z projections, output layer)."""
    h, s, z = p["hidden"], p["hyper"], p["n_z"]
    return 4 * h * (h + VOCAB) + 4 * s * (s + 2 * h) + 8 * z * (s + h) + h * VOCAB


def bpc(p: dict, evaluation: int, noise: float) -> float:
    final = 1.3 + 1.4 * (2e4 / n_params(p)) ** 0.35 + 0.3 * math.log10(p["lr"] / 3e-3) ** 2 + 0.02 * noise
    return final + 1.6 * math.exp(-0.6 * (evaluation - 1))


MAX_PARAMS = n_params({"hidden": 1024, "hyper": 256, "n_z": 32, "lr": 1e-3})
MIN_PARAMS = n_params({"hidden": 32, "hyper": 16, "n_z": 4, "lr": 1e-3})
SMALL_DECILE = float(np.quantile([n_params({k: d.low * (d.high / d.low) ** u if k != "n_z" else d.low + u * (d.high - d.low)
                                            for (k, d), u in zip(SPACE.items(), row)})
                                  for row in np.random.default_rng(0).random((20000, 4))], 0.1))


def search(sampler: str, pruned: str, seed: int, evaluations: int, population: int) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"])
    rungs = ParetoRungs(1, 3, MAX_EVALUATIONS, ["min", "min"])
    config = SimpleNamespace(sampler=SimpleNamespace(name=sampler.split()[0], seed=seed, n_startup_trials=None,
                                                     population_size=population))
    rng = np.random.default_rng(seed)
    spent, complete = 0, []
    while spent < evaluations:
        ask_seed = trial_seed(seed, len(study.trials))
        study.sampler = (optuna.samplers.NSGAIISampler(seed=ask_seed, population_size=population)  # Optuna's own
                         if sampler == "nsga2" else make_sampler(config, ask_seed))
        trial = study.ask(SPACE)
        size, noise = n_params(trial.params), rng.standard_normal()
        for evaluation in range(1, MAX_EVALUATIONS + 1):
            spent += 1
            value = bpc(trial.params, evaluation, noise)
            if not rungs.decide(str(trial.number), evaluation, [size, value]):
                study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned == "pruned" else
                           optuna.trial.TrialState.FAIL)
                break
        else:
            study.tell(trial, [size, value])
            complete.append((size, value))
    points = np.array(complete, dtype=float)
    key = type(study.sampler)._GENERATION_KEY if "nsga2" in sampler else None
    logs = np.column_stack([np.log(points[:, 0] / MIN_PARAMS) / math.log(MAX_PARAMS / MIN_PARAMS), points[:, 1]])
    return {"hv": hypervolume(points, [MAX_PARAMS, REFERENCE_BPC], ["min", "min"]) / (MAX_PARAMS * REFERENCE_BPC),
            "log_hv": hypervolume(logs, [1.0, REFERENCE_BPC], ["min", "min"]) / REFERENCE_BPC,
            "small": int(np.sum(points[:, 0] <= SMALL_DECILE)), "trials": len(study.trials), "spent": spent,
            "complete": len(complete),
            "generation": max((t.system_attrs.get(key, 0) for t in study.trials), default=0) if key else None}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--evaluations", type=int, default=270, help="the compute of each search")
    parser.add_argument("--population", type=int, default=10, help="NSGA-II's population size")
    args = parser.parse_args(argv)
    variants = [("random", "pruned"), ("tpe", "pruned"), ("tpe", "ignored"), ("nsga2", "pruned"),
                ("nsga2 early-stopped", "pruned")]
    print(f"{args.seeds} seeds, {args.evaluations} evaluations per search, MO-ASHA rungs 1/3/9, one trial at a time; "
          f"smallest decile: at most {SMALL_DECILE:,.0f} parameters")
    means = {}
    for sampler, pruned in variants:
        runs = [search(sampler, pruned, seed, args.evaluations, args.population) for seed in range(args.seeds)]
        hv, log_hv = [r["hv"] for r in runs], [r["log_hv"] for r in runs]
        means[(sampler, pruned)] = statistics.mean(log_hv)
        generation = "" if runs[0]["generation"] is None else \
            f", generation reached {statistics.mean(r['generation'] for r in runs):.1f}"
        print(f"{sampler:20s} stopped trials {pruned:7s}: hypervolume {statistics.mean(hv):.4f} +- {statistics.stdev(hv):.4f}, "
              f"over log parameters {statistics.mean(log_hv):.4f} +- {statistics.stdev(log_hv):.4f}, "
              f"smallest-decile completed {statistics.mean(r['small'] for r in runs):.1f}, "
              f"trials {statistics.mean(r['trials'] for r in runs):.1f}{generation}")
    print(f"hypervolume over log parameters: tpe pruned/ignored = {means[('tpe', 'pruned')] / means[('tpe', 'ignored')]:.3f}; "
          f"nsga2 early-stopped/optuna = {means[('nsga2 early-stopped', 'pruned')] / means[('nsga2', 'pruned')]:.3f}")


if __name__ == "__main__":
    main()
