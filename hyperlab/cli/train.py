"""``hyperlab train`` and ``hyperlab sample``: the training core on the command line, tracked in MLflow."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

import yaml

from hyperlab.cli.files import check_out_folder
from hyperlab.config_io import load_yaml
from hyperlab.errors import ConfigError, UserError
from hyperlab.training.config import TrainConfig

EXPERIMENT = "hyperlab-train"
TAG_PIPELINE = "hyperlab.pipeline"


def load_pipeline(file: str, data_dir: str | None) -> tuple[TrainConfig, dict]:
    """A pipeline file as ``train`` accepts it: the config and its parameter report, or a
    ConfigError naming the file (nothing created). ``validate`` checks files with this too."""
    from hyperlab.training.loop import preflight

    config = load_yaml(TrainConfig, file)
    try:
        return config, preflight(config, data_dir)
    except ConfigError as err:  # the training core names the key; add the file
        raise ConfigError(file, err.problems) from None


def train(args: argparse.Namespace) -> int:
    """Train one model from a pipeline YAML file, logged to MLflow as one run."""
    from hyperlab.cli import Terminated
    from hyperlab.tracking import layout, runs
    from hyperlab.tracking.store import RUNS_DIR, init_store, resolve_tracking_uri
    from hyperlab.training.loop import fit

    config, sizes = load_pipeline(args.file, args.data_dir)  # a bad config stops here, before any run exists
    if args.out:
        check_out_folder(Path(args.out), "--out", must_be_empty_of_checkpoints=True)
    client = runs.client(init_store(resolve_tracking_uri(args.tracking_uri)))
    stem = Path(args.file).stem
    run_id = runs.start_run(client, EXPERIMENT, run_name=stem, tags={TAG_PIPELINE: stem})
    workdir = Path(args.out) if args.out else RUNS_DIR / "train" / run_id
    status, result = "FAILED", None
    interrupts = _StickyInterrupts()
    try:
        interrupts.install()
        with interrupts.deferred():
            runs.log_params(client, run_id, config.flat())
            runs.log_config(client, run_id, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
            runs.log_parameter_report(client, run_id, sizes)
        result, last_checkpoint = _fit_with_progress(config, client, run_id, workdir, args.data_dir, fit,
                                                     interrupts)
        with interrupts.deferred():
            if last_checkpoint is not None:
                runs.log_checkpoint(client, run_id, last_checkpoint)
            runs.set_tags(client, run_id, {layout.TAG_OUTCOME: result["outcome"]})
        status = "FINISHED" if result["outcome"] == "completed" else "FAILED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        raise
    finally:
        interrupts.uninstall()
        with _signals_held():  # a second Ctrl-C must not leave the run RUNNING
            if status == "KILLED":
                runs.set_tags(client, run_id, {layout.TAG_OUTCOME: "interrupted"})
            runs.finish_run(client, run_id, status)
        if status == "KILLED":
            print(f"run {run_id} marked KILLED; its checkpoints are in {workdir}")
    _print_summary(run_id, result, workdir)
    return 0 if status == "FINISHED" else 1


class _StickyInterrupts:
    """Ctrl-C and SIGTERM raise in the main thread (KeyboardInterrupt, Terminated) as usual, and are raised
    again at the next training step (``check``) until the command has acted on one: Python drops an
    exception raised where it ignores them (a weakref callback, a ``__del__``), and training would then go
    on as if never interrupted. Such a dropped interrupt prints no traceback."""

    def __init__(self):
        self._pending: int | None = None
        self._deferring = False
        self._previous: dict = {}
        self._previous_hook = sys.unraisablehook

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable

    def uninstall(self) -> None:
        self._pending = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = self._previous_hook

    def check(self) -> None:
        """Raise the interrupt that came and was not acted on, if any (a safe point: between steps)."""
        if self._pending is not None:
            self._raise(self._pending)

    @contextlib.contextmanager
    def deferred(self):
        """Writes to the store: an interrupt that comes during them is raised after them, never inside a
        database transaction (which would be left open, holding the store's lock)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        self.check()

    def _handle(self, signum, frame):
        self._pending = signum
        if not self._deferring:
            self._raise(signum)

    @staticmethod
    def _raise(signum: int):
        from hyperlab.cli import Terminated

        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()

    def _unraisable(self, unraisable) -> None:
        from hyperlab.cli import Terminated

        if not isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):  # dropped, not lost: no traceback
            self._previous_hook(unraisable)


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait until the block is done (then are delivered)."""
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _fit_with_progress(config, client, run_id, workdir, data_dir, fit, interrupts):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hyperlab.tracking import runs

    last = {"checkpoint": None, "first": True}
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns) as progress:
        bar = progress.add_task("train", total=config.schedule.steps, status="")

        def report(metrics, checkpoint_dir):
            entries, tags = runs.evaluation_entries(metrics, metrics["step"], first=last["first"])
            with interrupts.deferred():
                runs.log_metric_entries(client, run_id, entries)
                runs.set_tags(client, run_id, tags)
            last["first"] = False
            last["checkpoint"] = checkpoint_dir or last["checkpoint"]
            shown = "  ".join(_show(k, v) for k, v in metrics.items()
                              if k.split("/")[0] in ("train", "val", "test") or k == "throughput")
            progress.console.print(f"step {metrics['step']}: {shown}")  # a log line, also when not a TTY
            progress.update(bar, status=shown)

        def on_step(step):
            interrupts.check()
            progress.update(bar, completed=step)

        result = fit(config, report, workdir=workdir, data_dir=data_dir, on_step=on_step)
    return result, last["checkpoint"]


def _print_summary(run_id: str, result: dict, workdir: Path) -> None:
    from rich.console import Console

    keys = [k for k in result if k.split("/")[0] in ("val", "test")] + ["model/n_params", "model/compression_ratio"]
    shown = ", ".join(_show(k, result[k]) for k in keys if k in result)
    Console().print(f"run [bold]{run_id}[/] {result['outcome']} at step {result['step']}: {shown}\n"
                    f"checkpoints in {workdir}")


def _sample_handwriting(model, args: argparse.Namespace, out: Path) -> int:
    from hyperlab.analysis.strokes import activity_png, animation_html, strokes_png, strokes_svg, weight_change
    from hyperlab.models.handwriting import generate

    points, d_h = generate(model, args.length, bias=args.bias, seed=args.seed, return_scales=True)
    points = points.numpy()
    out.mkdir(exist_ok=True)
    (out / "strokes.svg").write_text(strokes_svg(points), encoding="utf-8")
    written = [out / "strokes.svg", strokes_png(points, out / "strokes.png")]
    change = None if d_h is None else weight_change(d_h.numpy())
    if change is not None:
        written.append(activity_png(points, change, out / "activity.png"))
    (out / "handwriting.html").write_text(animation_html(points, change), encoding="utf-8")
    written.append(out / "handwriting.html")
    for path in written:
        print(f"wrote {path}")
    if change is None:
        print("the model has no hyper cell: no activity figure")
    return 0


def _show(key: str, value) -> str:
    return f"{key} {value:,}" if isinstance(value, int) else f"{key} {value:.4g}"


def sample(args: argparse.Namespace) -> int:
    """Sample from a trained run: text from a char model (sample.txt, activity.png), handwriting from a
    handwriting model (strokes.svg, strokes.png, and for a hyper cell activity.png and handwriting.html)."""
    from hyperlab.loading import load_run
    from hyperlab.tracking.store import resolve_tracking_uri
    from hyperlab.training.data_cache import corpus
    from hyperlab.training.generate import activity_figure
    from hyperlab.training.generate import sample as generate

    out = check_out_folder(Path(args.out), "--out")
    model, config = load_run(args.run_id, resolve_tracking_uri(args.tracking_uri), args.data_dir)
    if config.task == "handwriting":
        return _sample_handwriting(model, args, out)
    if config.task != "charlm":
        raise UserError(f"run {args.run_id} trained a {config.task!r} model; sample needs a char or "
                        "handwriting model")
    generated = generate(model, corpus(config.data.dataset, args.data_dir), args.length,
                         args.temperature, args.primer, args.seed)
    out.mkdir(exist_ok=True)
    (out / "sample.txt").write_text(args.primer + generated.text, encoding="utf-8")
    print(f"wrote {out / 'sample.txt'}")
    if generated.activity is None:
        print("the model has no hyper cell: no activity figure")
    else:  # one cell per token: a byte-level model's multi-byte characters span several
        print(f"wrote {activity_figure(generated.tokens, generated.activity, out / 'activity.png')}")
    return 0
