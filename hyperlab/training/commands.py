"""``hyperlab train`` and ``hyperlab sample``: the training core on the command line, tracked in MLflow."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from hyperlab.config_io import load_yaml
from hyperlab.errors import ConfigError, UserError
from hyperlab.training.config import TrainConfig, builder_rejection

EXPERIMENT = "hyperlab-train"
TAG_PIPELINE = "hyperlab.pipeline"


def train(args: argparse.Namespace) -> int:
    """Train one model from a pipeline YAML file, logged to MLflow as one run."""
    from hyperlab.tracking import layout, runs
    from hyperlab.tracking.store import RUNS_DIR, init_store, resolve_tracking_uri
    from hyperlab.training.loop import fit

    config = load_yaml(TrainConfig, args.file)  # a bad config stops here, before anything is created
    sizes = _sizes(config, args.file, args.data_dir)
    _check_device(config, args.file)
    if args.out:
        _check_out_folder(Path(args.out))
    client = runs.client(init_store(resolve_tracking_uri(args.tracking_uri)))
    stem = Path(args.file).stem
    run_id = runs.start_run(client, EXPERIMENT, run_name=stem, tags={TAG_PIPELINE: stem})
    workdir = Path(args.out) if args.out else RUNS_DIR / "train" / run_id
    status = "FAILED"
    try:
        runs.log_params(client, run_id, config.flat())
        runs.log_config(client, run_id, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        runs.log_parameter_report(client, run_id, sizes)
        result, last_checkpoint = _fit_with_progress(config, client, run_id, workdir, args.data_dir, fit)
        if last_checkpoint is not None:
            runs.log_checkpoint(client, run_id, last_checkpoint)
        runs.set_tags(client, run_id, {layout.TAG_OUTCOME: result["outcome"]})
        status = "FINISHED" if result["outcome"] == "completed" else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        runs.finish_run(client, run_id, status)
    _print_summary(run_id, result, workdir)
    return 0 if status == "FINISHED" else 1


def _sizes(config: TrainConfig, file: str, data_dir: str | None) -> dict:
    """The parameter report, computed before any run exists: impossible model sizes fail early."""
    from hyperlab.training.loop import parameter_count

    try:
        return parameter_count(config, data_dir)
    except ConfigError as err:  # the model names the key; add the file
        raise ConfigError(file, err.problems) from None
    except (ValueError, TypeError) as err:
        rejection = builder_rejection(config.model.name, config.model.arguments(), err)
        raise ConfigError(file, [("model", rejection)]) from None


def _check_device(config: TrainConfig, file: str) -> None:
    from hyperlab.training.loop import resolve_device

    try:
        resolve_device(config.device)
    except ConfigError as err:
        raise ConfigError(file, err.problems) from None


def _check_out_folder(out: Path) -> None:
    """A new run writes its checkpoints to ``out`` and deletes older ones there: refuse a folder that
    holds another run's checkpoints (every ``hyperlab train`` is a new run)."""
    from hyperlab.training.checkpoint import checkpoints

    found = checkpoints(out)
    if found:
        raise UserError(f"--out {out} holds checkpoints of an earlier run ({', '.join(p.name for p in found)}), "
                        "which this run would delete; choose an empty folder or remove them")


def _fit_with_progress(config, client, run_id, workdir, data_dir, fit):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hyperlab.tracking import runs

    last = {"checkpoint": None}
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns) as progress:
        bar = progress.add_task("train", total=config.schedule.steps, status="")

        def report(metrics, checkpoint_dir):
            runs.log_metrics(client, run_id, metrics, metrics["step"])
            last["checkpoint"] = checkpoint_dir or last["checkpoint"]
            shown = "  ".join(_show(k, v) for k, v in metrics.items()
                              if k.split("/")[0] in ("train", "val", "test") or k == "throughput")
            progress.console.print(f"step {metrics['step']}: {shown}")  # a log line, also when not a TTY
            progress.update(bar, status=shown)

        result = fit(config, report, workdir=workdir, data_dir=data_dir,
                     on_step=lambda step: progress.update(bar, completed=step))
    return result, last["checkpoint"]


def _print_summary(run_id: str, result: dict, workdir: Path) -> None:
    from rich.console import Console

    keys = [k for k in result if k.split("/")[0] in ("val", "test")] + ["model/n_params", "model/compression_ratio"]
    shown = ", ".join(_show(k, result[k]) for k in keys if k in result)
    Console().print(f"run [bold]{run_id}[/] {result['outcome']} at step {result['step']}: {shown}\n"
                    f"checkpoints in {workdir}")


def _show(key: str, value) -> str:
    return f"{key} {value:,}" if isinstance(value, int) else f"{key} {value:.4g}"


def sample(args: argparse.Namespace) -> int:
    """Sample text from a trained char model's run; write sample.txt and activity.png to --out."""
    from hyperlab.tracking import runs
    from hyperlab.tracking.store import resolve_tracking_uri
    from hyperlab.training.data_cache import corpus
    from hyperlab.training.generate import activity_figure, sample as generate
    from hyperlab.training.loop import load_model

    data_dir = getattr(args, "data_dir", None)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_dir, config_path = runs.download_run_files(resolve_tracking_uri(args.tracking_uri),
                                                              args.run_id, tmp)
        config = load_yaml(TrainConfig, config_path)
        if config.task != "charlm":
            raise UserError(f"run {args.run_id} trained a {config.task!r} model; sample needs a char model")
        model = load_model(checkpoint_dir, config, data_dir)
    generated = generate(model, corpus(config.data.dataset, data_dir), args.length,
                         args.temperature, args.primer, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sample.txt").write_text(args.primer + generated.text, encoding="utf-8")
    print(f"wrote {out / 'sample.txt'}")
    if generated.activity is None:
        print("the model has no hyper cell: no activity figure")
    else:  # one cell per token: a byte-level model's multi-byte characters span several
        print(f"wrote {activity_figure(generated.tokens, generated.activity, out / 'activity.png')}")
    return 0
