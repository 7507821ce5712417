"""One trial of ``benchmarks/search_quality.py`` as Syne Tune's local backend runs it (a process per trial):
the same training as a hyperlab trial of that benchmark's space (``hyperlab.training.fit``, one thread),
reporting every evaluation to Syne Tune with its parameter count, bits per character and the CPU-seconds
trained so far (``time/elapsed`` times its one CPU, as hyperlab counts a trial's cost).

    python benchmarks/search_quality_trial.py --hidden_size 64 --hyper_size 16 --n_z 4
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from search_quality import SIZE_KEYS, base_config


def main() -> None:
    import torch
    from syne_tune import Reporter

    from hyperlab.training import fit

    parser = argparse.ArgumentParser()
    for key in SIZE_KEYS:
        parser.add_argument(f"--{key.split('.')[-1]}", type=int, required=True)
    args, _ = parser.parse_known_args()  # Syne Tune adds its own (a checkpoint folder this trial does not use)
    torch.set_num_threads(1)
    config = base_config().with_overrides({key: getattr(args, key.split(".")[-1]) for key in SIZE_KEYS})
    report, evaluation = Reporter(), 0

    def on_evaluation(metrics: dict, checkpoint) -> None:
        nonlocal evaluation
        if "val/bpc" not in metrics:
            return
        evaluation += 1
        report(epoch=evaluation, n_params=float(metrics["model/n_params"]), bpc=float(metrics["val/bpc"]),
               cpu_seconds=float(metrics["time/elapsed"]))

    with tempfile.TemporaryDirectory(prefix="hyperlab-syne-trial-") as workdir:
        fit(config, on_evaluation, workdir=Path(workdir))


if __name__ == "__main__":
    main()
