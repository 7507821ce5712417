"""A search driver for the early-stopping test: hyperlab's search (real Ray, real Optuna study, real MLflow
store) on a trainable that trains nothing and reports, at every evaluation, a bpc that is worse the smaller
the model (as real char-LMs are, at every rung). Run as a script, so Ray ships the trainable by value.

    python rung_driver.py FOLDER NAME [NAME ...]    # FOLDER/NAME.yaml each, one search after another
"""

from __future__ import annotations

import sys
from pathlib import Path

EVALUATIONS = 4


def size_bound_trainable(config: dict) -> None:
    from ray import tune

    from hyperlab.search.searcher import COMPLETE_KEY, N_PARAMS_KEY

    n_params = float(config[N_PARAMS_KEY])
    for evaluation in range(1, EVALUATIONS + 1):
        metrics = {"step": 10 * evaluation, "evaluation": evaluation, "model/n_params": n_params,
                   "val/bpc": 1.0 + 300.0 / n_params ** 0.5 + 1.0 / evaluation}
        if evaluation == EVALUATIONS:
            metrics[COMPLETE_KEY] = 1
        tune.report(metrics)


def main(folder: Path, names: list[str]) -> None:
    from hyperlab.search import runner
    from hyperlab.search.home import resolve
    from hyperlab.search.space import load_search_space

    for name in names:
        path = folder / f"{name}.yaml"
        space, base = load_search_space(path)
        home = resolve(name, f"sqlite:///{folder / 'mlflow.db'}", str(folder / "ray"), None, None, None, False, 2)
        outcome = runner.run_search(home, space, base, path.read_text(), progress=False,
                                    trainable=size_bound_trainable)
        assert outcome.complete, name


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
