"""The training core: ``fit(config, report)``. It knows neither Ray nor MLflow: it calls
``report(metrics, checkpoint_dir)`` at every evaluation and returns the final metrics."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyperlab.training import checkpoint
from hyperlab.training.config import TrainConfig
from hyperlab.training.data_cache import data_shape

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


def parameter_count(config: TrainConfig, data_dir: str | None = None) -> dict[str, Any]:
    """The parameter report of the configured model, without building its weights or training."""
    from hyperlab.models import size_model

    return size_model(config.model, data_shape(config.task, config.data.dataset, data_dir))


def preflight(config: TrainConfig, data_dir: str | None = None, check_device: bool = True) -> dict[str, Any]:
    """Everything training would reject at its start, checked without training: the device (unless
    ``check_device`` is False, for a driver whose trials run elsewhere), the data and whether its
    splits hold a batch, the model's size. Returns the parameter report; a problem is a ConfigError
    naming the key (the caller adds the file)."""
    from hyperlab.errors import ConfigError, UserError
    from hyperlab.models import size_model

    if check_device:
        resolve_device(config.device)
    try:
        task = make_task(config, data_dir, torch.device("cpu"))  # loads the data, cuts its batches
    except ConfigError:
        raise
    except UserError as err:
        raise ConfigError(None, [("data", str(err))]) from None
    return size_model(config.model, task.data_shape())


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
    if config.task == "handwriting":
        from hyperlab.training.handwriting import HandwritingTask
        return HandwritingTask(config, data_dir, device)
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
    no checkpoint. ``resume_from`` (a checkpoint directory) continues exactly where that run stopped,
    first reporting again every evaluation that run reported up to the checkpoint (from the final
    checkpoint, that is all): a resumed run reports what an uninterrupted one does.
    ``on_step(step)``, if given, is called after every optimiser step (for progress bars).
    """
    trainer = _Trainer(config, Path(workdir), data_dir)
    if resume_from is not None:
        trainer.restore(Path(resume_from))
    return trainer.run(report or (lambda metrics, path: None), on_step)


class _Trainer:
    def __init__(self, config: TrainConfig, workdir: Path, data_dir: str | None):
        from hyperlab.models import build_model, parameter_report, prepare_kernels

        self.config, self.workdir = config, workdir
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.task = make_task(config, data_dir, self.device)
        self.model = build_model(config.model, self.task.data_shape()).to(self.device)
        prepare_kernels(self.model, self.device)  # a first-time C++ build is not training time
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.optim.lr,
                                          weight_decay=config.optim.weight_decay)
        self.model_metrics = model_metrics(parameter_report(self.model))
        self.window = _Window(self.device)
        self.step, self.elapsed_before, self.started = 0, 0.0, time.perf_counter()
        self.resumed_from: Path | None = None
        self.history: list[dict[str, Any]] = []  # every evaluation's report so far, saved with each checkpoint

    def restore(self, path: Path) -> None:
        self.model.load_state_dict(checkpoint.load_model_state(path, self.device))
        state = checkpoint.load_trainer_state(path)  # on the CPU: RNG states must stay there
        self.optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the parameters' device
        self.task.load_state_dict(state["task"])
        self.window.load_state_dict(state["window"])
        self.step, self.elapsed_before = state["step"], state["elapsed"]
        checkpoint.set_rng_state(state["rng"])
        self.resumed_from, self.history = path, list(state.get("history", []))

    def run(self, report: Report, on_step: Callable[[int], None] | None) -> dict[str, Any]:
        schedule, clip = self.config.schedule, self.config.optim.clip
        check_every = min(schedule.eval_every, DIVERGENCE_CHECK_EVERY)
        if self.resumed_from is not None:  # what the checkpoint recorded, in case its report was lost
            metrics = self._report_checkpoint_again(report)
            if self.step >= schedule.steps:  # resumed from the final checkpoint: nothing left to train
                return metrics
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
        self.history.append(dict(metrics))
        path = self._save(metrics)
        report(metrics, path)
        self.window.started = time.perf_counter()  # throughput counts training time only
        return metrics

    def _report_checkpoint_again(self, report: Report) -> dict[str, Any]:
        """Resumed: report again every evaluation the checkpoint's run reported, as it reported them
        (reports the interrupted process made may never have reached their reader; a reader that has
        them already sees the same steps and values again). The last one comes with the checkpoint's
        path when the checkpoint is in this run's folder."""
        if not self.history:  # a checkpoint written before reports were stored with it
            return self._evaluate(report)
        in_workdir = self.resumed_from.resolve().parent == self.workdir.resolve()
        for metrics in self.history[:-1]:
            report(dict(metrics), None)
        report(dict(self.history[-1]), self.resumed_from if in_workdir else self._save(self.history[-1]))
        return dict(self.history[-1])

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
                         "metrics": metrics, "history": self.history}
        return checkpoint.save(self.workdir, self.step, self.model.state_dict(), trainer_state,
                               self.config.model_dump(mode="json"))

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started


def load_model(checkpoint_dir: str | Path, config: TrainConfig, data_dir: str | None = None,
               device: str | torch.device = "cpu", where: str | None = None) -> torch.nn.Module:
    """The model of a checkpoint directory, rebuilt from ``config`` and the data, in eval mode.

    A checkpoint that cannot be read (truncated, not a checkpoint), that does not fit the config
    (wrong shapes or names) or that holds NaN or infinite weights is a UserError naming ``where``
    (default: the directory); its weights are read with ``weights_only`` (no code runs)."""
    from hyperlab.errors import UserError
    from hyperlab.models import build_model

    where = where or str(checkpoint_dir)
    model = build_model(config.model, data_shape(config.task, config.data.dataset, data_dir)).to(device)
    try:
        state = checkpoint.load_model_state(checkpoint_dir, device)
    except Exception as err:  # noqa: BLE001 - torch raises a dozen kinds for a damaged file
        raise UserError(f"{where}: model.pt is not a readable checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{where}: model.pt holds no state dict of tensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()
        raise UserError(f"{where}: model.pt does not fit its config ({' '.join(first[:3])[:300]})") from None
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise UserError(f"{where}: model.pt holds NaN or infinite weights ({', '.join(bad[:5])})")
    return model.eval()
