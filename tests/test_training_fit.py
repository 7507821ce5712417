"""fit(): bits per character by hand, falling losses, exact resume, divergence, report keys,
atomic checkpoints, and the classifier path on generated images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hyperlab.config_io import validate
from hyperlab.metrics import METRICS
from hyperlab.training import TrainConfig, checkpoint, fit, parameter_count
from hyperlab.training.charlm import CharLMTask

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]


pytestmark = pytest.mark.usefixtures("private_cache", "one_thread")


def write_text(path, n_chars: int, seed: int = 0) -> str:
    """Words drawn at random, one sentence a line: structure a small model learns in a few dozen steps."""
    rng = np.random.default_rng(seed)
    text = ""
    while len(text) < n_chars:
        text += " ".join(rng.choice(WORDS, size=rng.integers(3, 8))) + "\n"
    path.write_text(text[:n_chars])
    return str(path)


def char_config(dataset: str, **overrides) -> TrainConfig:
    base = {"task": "charlm", "seed": 0, "device": "cpu",
            "data": {"dataset": dataset, "batch_size": 8, "seq_len": 20},
            "model": {"name": "char_rnn", "cell": "ln_hyperlstm", "hidden_size": 32, "hyper_size": 8,
                      "n_z": 4, "dropout": 0.1},
            "optim": {"lr": 0.01, "clip": 1.0},
            "schedule": {"steps": 12, "eval_every": 4, "eval_batches": 3}}
    return validate(TrainConfig, base).with_overrides(overrides)


class ConstantLogits(nn.Module):
    """A 'char model' whose logits are the same vector at every position."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, tokens, state=None):
        return self.logits.expand(*tokens.shape, -1), state


def test_bpc_of_uniform_logits_is_log2_vocab(tmp_path):
    task = CharLMTask(char_config(write_text(tmp_path / "t.txt", 4000)), None, torch.device("cpu"))
    vocab = task.corpus.vocab_size
    assert vocab == len(set("".join(WORDS) + " \n"))  # 20 symbols
    bpc = task.evaluate(ConstantLogits(torch.zeros(vocab)), "valid")["val/bpc"]
    assert bpc == pytest.approx(math.log2(vocab), rel=1e-6)  # float32 cross-entropy


@pytest.mark.parametrize("max_batches", [None, 1])
def test_bpc_matches_a_numpy_reference(tmp_path, max_batches):
    config = char_config(write_text(tmp_path / "t.txt", 8000))
    task = CharLMTask(config, None, torch.device("cpu"))
    logits = torch.randn(task.corpus.vocab_size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bpc = task.evaluate(ConstantLogits(logits.float()), "valid", max_batches)["val/bpc"]
    # reference: the split cut into B streams; targets are positions 1 .. n*T of each stream
    tokens, B, T = task.corpus.split("valid"), 8, 20
    streams = np.asarray(tokens)[: len(tokens) // B * B].reshape(B, -1)
    n = (streams.shape[1] - 1) // T if max_batches is None else max_batches
    log2p = torch.log_softmax(logits, 0).numpy() / math.log(2)
    assert bpc == pytest.approx(-log2p[streams[:, 1:n * T + 1]].mean(), rel=1e-6)


def test_loss_falls_and_reports_carry_every_key(tmp_path):
    config = char_config(write_text(tmp_path / "t.txt", 20000), **{"schedule.steps": 60, "schedule.eval_every": 20})
    reports = []
    result = fit(config, lambda m, p: reports.append((m, p)), workdir=tmp_path / "run")
    losses = [m["train/loss"] for m, _ in reports]
    vocab = len(set("".join(WORDS) + " \n"))  # 15 symbols
    assert [m["step"] for m, _ in reports] == [20, 40, 60]
    assert losses[-1] < losses[0] - 0.5 and losses[0] < math.log(vocab) + 0.2
    assert reports[-1][0]["val/bpc"] < 0.75 * math.log2(vocab)
    first_keys = {"step", "train/loss", "val/bpc", "throughput", "time/elapsed", "model/n_params",
                  "model/generator", "model/ordinary", "model/embeddings",
                  "model/generated_layers_with_hyper", "model/generated_layers_without_hyper"}
    assert set(reports[0][0]) == first_keys  # no compression ratio: a dynamic hypernetwork
    assert set(result) == first_keys | {"test/bpc", "done", "outcome"} and result["outcome"] == "completed"
    assert all(k in METRICS for k in result if "/" in k and not k.startswith("model/") or k == "model/n_params")
    # the parameter report: the paper's closed form for one LN HyperLSTM layer plus the softmax layer
    H, Hh, Nz, V = 32, 8, 4, vocab
    closed = 4 * H * (V + H + 1) + 4 * Hh * (V + H + Hh + 1) + 12 * Nz * (Hh + H) + 8 * Nz + 10 * H + 10 * Hh + H * V + V
    assert result["model/n_params"] == closed == parameter_count(config)["total"]
    assert reports[-1][1] == tmp_path / "run" / "checkpoint-60"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint-60"]  # the latest only


class _Stop(Exception):
    pass


def straight_and_resumed(config, tmp_path, stop_at: int) -> tuple[list[dict], list[dict]]:
    """The reports of one uninterrupted run, and of a run stopped at ``stop_at`` and resumed from its
    checkpoint there (in ``tmp_path/straight`` and ``tmp_path/cut``)."""
    straight, resumed = [], []
    fit(config, lambda m, p: straight.append(m), workdir=tmp_path / "straight")

    def stop(metrics, path):
        if metrics["step"] == stop_at:
            raise _Stop
    with pytest.raises(_Stop):
        fit(config, stop, workdir=tmp_path / "cut")
    fit(config, lambda m, p: resumed.append(m), workdir=tmp_path / "cut",
        resume_from=tmp_path / "cut" / f"checkpoint-{stop_at}")
    return straight, resumed


@pytest.mark.parametrize("cell", ["ln_hyperlstm", "hyperlstm"])  # eager and fused HyperLSTM paths
def test_resume_continues_exactly(tmp_path, cell):
    # 4000 chars: 22 training batches, so the run wraps to a new pass (fresh state) after the resume
    config = char_config(write_text(tmp_path / "t.txt", 4000),
                         **{"schedule.steps": 30, "schedule.eval_every": 6, "model.cell": cell})
    straight, resumed = straight_and_resumed(config, tmp_path, stop_at=18)

    assert [m["step"] for m in resumed] == [6, 12, 18, 24, 30]  # the checkpoint's reports first, again
    for key in ("train/loss", "val/bpc", "test/bpc"):
        assert [m.get(key) for m in resumed] == [m.get(key) for m in straight]
    assert resumed[-1]["time/elapsed"] > 0
    a = checkpoint.load_model_state(tmp_path / "straight" / "checkpoint-30")
    b = checkpoint.load_model_state(tmp_path / "cut" / "checkpoint-30")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("poison, eval_every, caught_at", [
    (float("nan"), 4, 4),      # caught by the evaluation that follows
    (float("inf"), 500, 100),  # caught by the finiteness check between evaluations
])
def test_a_poisoned_batch_ends_the_run_as_diverged(tmp_path, monkeypatch, poison, eval_every, caught_at):
    config = char_config(write_text(tmp_path / "t.txt", 4000),
                         **{"schedule.steps": 500, "schedule.eval_every": eval_every})
    clean = CharLMTask.train_loss

    def poisoned(self, model, step):
        loss, units = clean(self, model, step)
        return (loss * poison if step == 2 else loss), units
    monkeypatch.setattr(CharLMTask, "train_loss", poisoned)
    reports = []
    result = fit(config, lambda m, p: reports.append((m, p)), workdir=tmp_path / "run")
    assert result["outcome"] == "diverged" and result["done"] is True and result["step"] == caught_at
    assert not math.isfinite(result["train/loss"]) and "val/bpc" not in result
    assert reports[-1] == (result, None)  # reported, with no checkpoint of the broken weights
    assert checkpoint.latest(tmp_path / "run") is None


def test_resuming_from_the_final_checkpoint_reports_the_run_again(tmp_path):
    config = char_config(write_text(tmp_path / "t.txt", 4000))  # 12 steps, evaluated at 4, 8, 12
    reports = []
    result = fit(config, lambda m, p: reports.append((m, p)), workdir=tmp_path / "run")
    final = tmp_path / "run" / "checkpoint-12"
    assert reports[-1] == (result, final) and result["outcome"] == "completed"
    assert result["train/loss"] > 1.0 and result["throughput"] > 0 and result["time/elapsed"] > 0

    again = []
    resumed = fit(config, lambda m, p: again.append((m, p)), workdir=tmp_path / "run", resume_from=final)
    # every report as it was (losses, throughput, time, test/bpc), the last with the checkpoint
    assert resumed == result and again == [(m, None) for m, _ in reports[:-1]] + [(result, final)]
    elsewhere = []
    moved = fit(config, lambda m, p: elsewhere.append((m, p)), workdir=tmp_path / "other", resume_from=final)
    assert moved == result and elsewhere[-1] == (result, tmp_path / "other" / "checkpoint-12")
    a, b = (checkpoint.load_model_state(path / "checkpoint-12") for path in (tmp_path / "run", tmp_path / "other"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("split, poison, caught_at, kept", [
    ("valid", float("nan"), 8, 4),    # the second validation
    ("test", float("inf"), 12, 8),    # the test evaluation at the end
])
def test_a_non_finite_evaluation_with_a_finite_loss_ends_the_run_as_diverged(
        tmp_path, monkeypatch, split, poison, caught_at, kept):
    config = char_config(write_text(tmp_path / "t.txt", 4000))  # 12 steps, evaluated at 4, 8, 12
    clean, calls = CharLMTask.evaluate, []

    def poisoned(self, model, which, max_batches=None):
        scores = clean(self, model, which, max_batches)
        calls.append(which)
        if which == split and calls.count(split) == (2 if split == "valid" else 1):
            return {key: poison for key in scores}  # what NaN weights' outputs would give
        return scores
    monkeypatch.setattr(CharLMTask, "evaluate", poisoned)
    reports = []
    result = fit(config, lambda m, p: reports.append((m, p)), workdir=tmp_path / "run")
    metric = "val/bpc" if split == "valid" else "test/bpc"
    assert result["outcome"] == "diverged" and result["done"] is True and result["step"] == caught_at
    assert math.isfinite(result["train/loss"]) and not math.isfinite(result[metric])
    assert [m["step"] for m, _ in reports] == [4, 8, 12][:caught_at // 4]
    assert reports[-1] == (result, None)  # reported, with no checkpoint of the broken weights
    assert checkpoint.latest(tmp_path / "run") == tmp_path / "run" / f"checkpoint-{kept}"


def test_a_save_clears_what_a_crash_left_behind_and_nothing_else(tmp_path):
    workdir = tmp_path / "run"
    first = checkpoint.save(workdir, 8, {"w": torch.zeros(2)}, {"step": 8}, {"seed": 0})
    aside = workdir / ".checkpoint-8.old.tmp"  # a crash between moving the old copy aside and deleting it
    aside.mkdir()
    (aside / "model.pt").write_bytes(b"stale")
    (workdir / ".checkpoint-12.k2x9.tmp").mkdir()  # a crash while writing
    (workdir / "notes.tmp").write_text("the user's")
    again = checkpoint.save(workdir, 8, {"w": torch.ones(2)}, {"step": 8}, {"seed": 0})
    assert again == first and sorted(p.name for p in workdir.iterdir()) == ["checkpoint-8", "notes.tmp"]
    assert torch.equal(checkpoint.load_model_state(again)["w"], torch.ones(2))
    assert checkpoint.checkpoints(workdir) == [again]


def test_checkpoints_appear_whole_or_not_at_all(tmp_path, monkeypatch):
    real_replace, renames = checkpoint.os.replace, []

    def replace(src, dst):
        files = sorted(p.name for p in checkpoint.Path(src).iterdir())
        renames.append((checkpoint.Path(src).name, checkpoint.Path(dst).name, files))
        if len(renames) == 2:
            raise OSError("disk full")  # a crash between writing the files and publishing them
        real_replace(src, dst)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    config = char_config(write_text(tmp_path / "t.txt", 4000), **{"schedule.steps": 8})
    with pytest.raises(OSError, match="disk full"):
        fit(config, workdir=tmp_path / "run")
    (src1, dst1, files1), (src2, dst2, _) = renames
    assert src1.startswith(".checkpoint-4.") and src1.endswith(".tmp") and dst1 == "checkpoint-4"
    assert files1 == ["config.yaml", "model.pt", "trainer.pt"] and dst2 == "checkpoint-8"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint-4"]  # temp dir removed
    assert checkpoint.latest(tmp_path / "run") == tmp_path / "run" / "checkpoint-4"
    assert checkpoint.load_trainer_state(tmp_path / "run" / "checkpoint-4")["step"] == 4


def write_images(folder, per_class: dict[str, int], size: int = 12, seed: int = 0) -> str:
    """Two classes a convnet separates at once: reddish vs bluish noise, as PNG files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label, channel in (("blue", 2), ("red", 0)):
            (folder / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (size, size, 3))
                pixels[..., channel] += 120
                Image.fromarray(pixels.astype(np.uint8)).save(folder / split / label / f"{i}.png")
    return str(folder)


def test_classifier_learns_generated_images(tmp_path):
    dataset = write_images(tmp_path / "images", {"train": 48, "valid": 16, "test": 16})
    config = validate(TrainConfig, {
        "task": "classify", "device": "cpu", "data": {"dataset": dataset, "batch_size": 16, "augment": True},
        "model": {"name": "wide_resnet", "depth": 10, "widen": 1, "hyper": True, "n_z": 4},
        "optim": {"lr": 0.01, "clip": None}, "schedule": {"steps": 24, "eval_every": 12}})
    reports = []
    result = fit(config, lambda m, p: reports.append(m), workdir=tmp_path / "run")
    assert [m["step"] for m in reports] == [12, 24] and result["outcome"] == "completed"
    assert {"val/acc", "val/loss", "test/acc", "test/loss", "model/compression_ratio"} <= set(result)
    assert result["val/acc"] == 1.0 and result["test/acc"] == 1.0
    assert reports[1]["train/loss"] < reports[0]["train/loss"] < math.log(2) + 0.3
    assert result["model/n_params"] == parameter_count(config)["total"]
    assert 0 < result["model/compression_ratio"] < 1


def test_classifier_resume_continues_exactly(tmp_path):
    # 48 training images in batches of 16: 3 per epoch, so the stop (step 6) falls between epochs
    dataset = write_images(tmp_path / "images", {"train": 24, "valid": 8, "test": 8})
    config = validate(TrainConfig, {
        "task": "classify", "device": "cpu", "data": {"dataset": dataset, "batch_size": 16, "augment": True},
        "model": {"name": "wide_resnet", "depth": 10, "widen": 1, "hyper": True, "n_z": 4},
        "optim": {"lr": 0.01, "clip": 1.0}, "schedule": {"steps": 10, "eval_every": 3}})
    straight, resumed = straight_and_resumed(config, tmp_path, stop_at=6)
    assert [m["step"] for m in resumed] == [3, 6, 9, 10]
    for key in ("train/loss", "val/loss", "test/acc"):
        assert [m.get(key) for m in resumed] == [m.get(key) for m in straight]
    a = checkpoint.load_model_state(tmp_path / "straight" / "checkpoint-10")
    b = checkpoint.load_model_state(tmp_path / "cut" / "checkpoint-10")
    assert all(torch.equal(a[k], b[k]) for k in a)  # batch-norm running statistics included


def test_a_first_time_build_of_the_cpu_kernels_is_not_training_time(tmp_path, monkeypatch):
    """The C++ cell loops are built (or loaded) when the trainer is made, before its clock starts: a build
    that takes minutes on a fresh machine never shows in ``time/elapsed``. The compiler cannot be made
    slow on purpose here, so the build is a stand-in that takes 3 s and then gives the real module."""
    import time

    from hyperlab.models import _ext

    real = _ext.kernels()
    calls = []

    def slow_build():  # slow the first time only, as a real build is
        if not calls:
            time.sleep(3.0)
        calls.append(time.perf_counter())
        return real

    monkeypatch.setattr(_ext, "kernels", slow_build)
    config = char_config(write_text(tmp_path / "t.txt", 5000), **{"model.cell": "hyperlstm",
                                                                  "schedule.steps": 4, "schedule.eval_every": 4})
    reports = []
    started = time.perf_counter()
    fit(config, lambda m, p: reports.append(m), workdir=tmp_path / "run")
    wall = time.perf_counter() - started
    assert calls and wall > 3.0  # the build ran, inside fit
    assert reports[-1]["time/elapsed"] < wall - 3.0  # and outside the trial's clock
