"""The training core: ``fit(config, report)``. It knows neither Ray nor MLflow: it calls
``report(metrics, checkpoint_dir)`` at every evaluation and returns the final metrics."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hyperlab.training import checkpoint
from hyperlab.training.config import TrainConfig
from hyperlab.training.data_cache import data_arguments

Report = Callable[[dict[str, Any], "Path | None"], None]
DIVERGENCE_CHECK_EVERY = 100  # steps between finiteness checks between evaluations (one host sync)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. A device this machine lacks is a ConfigError on
    the key ``device`` (the caller adds the file)."""
    from hyperlab.errors import ConfigError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(None, [("device", "'cuda' requested but no CUDA device is available here; "
                                            "expected 'auto' or 'cpu'")])
    return torch.device(name)


def model_spec(config: TrainConfig, data_args: dict[str, Any]) -> dict[str, Any]:
    """The dict ``hyperlab.models.build_model`` / ``size_model`` take: name, the config's arguments and
    those data arguments the builder accepts (a fixed-size MNIST net takes no ``num_classes``)."""
    from hyperlab.models import model_arguments

    accepted = set(model_arguments(config.model.name))
    return {"name": config.model.name, **config.model.arguments(),
            **{key: value for key, value in data_args.items() if key in accepted}}


def parameter_count(config: TrainConfig, data_dir: str | None = None) -> dict[str, Any]:
    """The parameter report of the configured model, without building its weights or training."""
    from hyperlab.models import size_model

    return size_model(model_spec(config, data_arguments(config.task, config.data.dataset, data_dir)))


def model_metrics(report: dict[str, Any]) -> dict[str, float]:
    """A parameter report as metrics: ``model/n_params`` (the total), ``model/compression_ratio``
    (when not None), and every other numeric entry under ``model/<key>``."""
    metrics = {}
    for key, value in report.items():  # None (no compression ratio) and non-numbers are left out
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics["model/n_params" if key == "total" else f"model/{key}"] = value
    return metrics


def make_task(config: TrainConfig, data_dir: str | None, device: torch.device):
    """The task object (data, loss, evaluation) of ``config.task``."""
    if config.task == "charlm":
        from hyperlab.training.charlm import CharLMTask
        return CharLMTask(config, data_dir, device)
    from hyperlab.training.classify import ClassifyTask
    return ClassifyTask(config, data_dir, device)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python RNGs (the process's, for this run)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class _Window:
    """Running sums since the last evaluation, kept on the device (no per-step host sync)."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.steps = self.units = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, units: int) -> None:
        self.loss_sum += loss.detach()
        self.steps += 1
        self.units += units

    def close(self) -> tuple[float, float]:
        """(mean loss, units per second) of the window; synchronises with the device once."""
        mean = self.loss_sum.item() / max(self.steps, 1)
        seconds = time.perf_counter() - self.started
        return mean, self.units / seconds if seconds > 0 else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum, "steps": self.steps, "units": self.units}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum.copy_(state["loss_sum"])
        self.steps, self.units = state["steps"], state["units"]


def fit(config: TrainConfig, report: Report | None = None, *, workdir: str | Path,
        data_dir: str | None = None, resume_from: str | Path | None = None,
        on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train ``config`` to the end (or until it diverges); return the final metrics plus
    ``outcome`` ("completed" or "diverged").

    At every evaluation (every ``schedule.eval_every`` steps and at the end) a checkpoint is written
    atomically under ``workdir`` (the latest only) and ``report(metrics, checkpoint_dir)`` is called.
    A non-finite training loss or validation/test metric ends the run as "diverged", reported with
    no checkpoint. ``resume_from`` (a checkpoint directory) continues exactly where that run stopped;
    from the final checkpoint, the run's final metrics are reported again as they were.
    ``on_step(step)``, if given, is called after every optimiser step (for progress bars).
    """
    trainer = _Trainer(config, Path(workdir), data_dir)
    if resume_from is not None:
        trainer.restore(Path(resume_from))
    return trainer.run(report or (lambda metrics, path: None), on_step)


class _Trainer:
    def __init__(self, config: TrainConfig, workdir: Path, data_dir: str | None):
        from hyperlab.models import build_model, parameter_report

        self.config, self.workdir = config, workdir
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.task = make_task(config, data_dir, self.device)
        self.model = build_model(model_spec(config, self.task.model_arguments())).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.optim.lr,
                                          weight_decay=config.optim.weight_decay)
        self.model_metrics = model_metrics(parameter_report(self.model))
        self.window = _Window(self.device)
        self.step, self.elapsed_before, self.started = 0, 0.0, time.perf_counter()
        self.resumed_from: Path | None = None
        self.last_metrics: dict[str, Any] | None = None  # of the checkpoint resumed from

    def restore(self, path: Path) -> None:
        self.model.load_state_dict(checkpoint.load_model_state(path, self.device))
        state = checkpoint.load_trainer_state(path)  # on the CPU: RNG states must stay there
        self.optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the parameters' device
        self.task.load_state_dict(state["task"])
        self.window.load_state_dict(state["window"])
        self.step, self.elapsed_before = state["step"], state["elapsed"]
        checkpoint.set_rng_state(state["rng"])
        self.resumed_from, self.last_metrics = path, state.get("metrics")

    def run(self, report: Report, on_step: Callable[[int], None] | None) -> dict[str, Any]:
        schedule, clip = self.config.schedule, self.config.optim.clip
        check_every = min(schedule.eval_every, DIVERGENCE_CHECK_EVERY)
        if self.step >= schedule.steps:  # resumed from the final checkpoint: nothing left to train
            return self._report_final_again(report)
        self.model.train()
        self.window.started = time.perf_counter()
        while self.step < schedule.steps:
            loss, units = self.task.train_loss(self.model, self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
            self.window.add(loss, units)
            self.step += 1
            if on_step is not None:
                on_step(self.step)
            if self.step % schedule.eval_every == 0 or self.step == schedule.steps:
                metrics = self._evaluate(report)
                if metrics.get("outcome") == "diverged":
                    return metrics
            elif self.step % check_every == 0 and not torch.isfinite(self.window.loss_sum).item():
                train_loss, throughput = self.window.close()
                return self._diverged(report, {"train/loss": train_loss, "throughput": throughput})
        return metrics

    def _evaluate(self, report: Report) -> dict[str, Any]:
        train_loss, throughput = self.window.close()
        if not math.isfinite(train_loss):
            return self._diverged(report, {"train/loss": train_loss, "throughput": throughput})
        final = self.step >= self.config.schedule.steps
        self.model.eval()
        scores = self.task.evaluate(self.model, "valid", self.config.schedule.eval_batches)
        if final and self.config.schedule.test:
            scores.update(self.task.evaluate(self.model, "test"))
        self.model.train()
        metrics = {"step": self.step, "train/loss": train_loss, **scores, "throughput": throughput}
        if not all(math.isfinite(value) for value in scores.values()):  # a finite loss, NaN weights' outputs
            return self._diverged(report, metrics)
        metrics.update({"time/elapsed": self._elapsed(), **self.model_metrics})
        if final:
            metrics.update({"done": True, "outcome": "completed"})
        self.window = _Window(self.device)  # the next window starts empty, and is saved so
        path = self._save(metrics)
        report(metrics, path)
        self.window.started = time.perf_counter()  # throughput counts training time only
        return metrics

    def _report_final_again(self, report: Report) -> dict[str, Any]:
        """Resumed at the end: report the metrics stored with the final checkpoint (an evaluation
        now would see an empty training window and no training time)."""
        if self.last_metrics is None:  # a checkpoint written before metrics were stored with it
            return self._evaluate(report)
        in_workdir = self.resumed_from.resolve().parent == self.workdir.resolve()
        path = self.resumed_from if in_workdir else self._save(self.last_metrics)
        report(dict(self.last_metrics), path)
        return dict(self.last_metrics)

    def _diverged(self, report: Report, measured: dict[str, Any]) -> dict[str, Any]:
        """End the run: ``measured`` (train/loss, throughput, maybe evaluation metrics) reported with
        no checkpoint of the broken weights."""
        metrics = {"step": self.step, **measured, "time/elapsed": self._elapsed(), **self.model_metrics,
                   "done": True, "outcome": "diverged"}
        report(metrics, None)
        return metrics

    def _save(self, metrics: dict[str, Any]) -> Path:
        trainer_state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                         "rng": checkpoint.rng_state(), "task": self.task.state_dict(),
                         "window": self.window.state_dict(), "elapsed": self._elapsed(),
                         "metrics": metrics}
        return checkpoint.save(self.workdir, self.step, self.model.state_dict(), trainer_state,
                               self.config.model_dump(mode="json"))

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started


def load_model(checkpoint_dir: str | Path, config: TrainConfig, data_dir: str | None = None,
               device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a checkpoint directory, rebuilt from ``config`` and the data, in eval mode."""
    from hyperlab.models import build_model

    args = data_arguments(config.task, config.data.dataset, data_dir)
    model = build_model(model_spec(config, args)).to(device)
    model.load_state_dict(checkpoint.load_model_state(checkpoint_dir, device))
    return model.eval()
