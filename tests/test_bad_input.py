"""Bad input, tried as a hostile user would: each case gives one clear line naming the file (or flag) and
what was expected, exit code 2, and leaves nothing behind (no store, no run, no folder); none runs code.

The config files are the corpus under ``tests/data/bad/``: each says in its header the message it must
give (``# expect:``, a regular expression) and the commands it is given to (``# commands:``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch
import yaml

from hyperlab.cli import main

from conftest import REPO

BAD = REPO / "tests" / "data" / "bad"


def _header(path) -> dict[str, str]:
    """The ``# key: value`` lines at the top of a corpus file (read as bytes: some are not UTF-8)."""
    found = {}
    for line in path.read_bytes().splitlines():
        match = re.match(rb"# (expect|commands|needs): (.*)$", line)
        if match:
            found[match.group(1).decode()] = match.group(2).decode("ascii")
    return found


CASES = [(path, command) for path in sorted(BAD.glob("*.yaml")) for command in _header(path)["commands"].split()]


def _argv(command: str, path, tmp_path) -> list[str]:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    return {"validate": ["validate", str(path)],
            "train": ["train", str(path), "--tracking-uri", uri],
            "search": ["search", str(path), "--tracking-uri", uri, "--num-cpus", "1"]}[command]


@pytest.mark.parametrize("path, command", CASES, ids=[f"{p.stem}-{c}" for p, c in CASES])
def test_a_bad_file_gives_one_clear_line_and_starts_nothing(path, command, tmp_path, monkeypatch, capsys):
    header = _header(path)
    if header.get("needs") == "no-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(_argv(command, path, tmp_path))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(err) < 1000, err[:2000]
    assert lines[0].startswith(f"hyperlab {command}: error: {path}: "), lines[0]
    assert re.search(header["expect"], lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []  # no store, no run, no Ray results, nothing half-written
    assert not (tmp_path / "pwned").exists()


def test_a_config_file_over_a_megabyte_is_refused_unread(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    assert main(["validate", str(big)]) == 2
    assert f"{big}: 2,000,000 bytes; a config file is at most 1,048,576" in capsys.readouterr().err


# ---- checkpoints given to `hyperlab sample` ------------------------------------------------------------------

QUICK_CONFIG = {"task": "charlm", "data": {"dataset": "bundled", "batch_size": 4, "seq_len": 8},
                "model": {"name": "char_rnn", "cell": "hyperlstm", "hidden_size": 8, "hyper_size": 4, "n_z": 2},
                "schedule": {"steps": 2}}


@pytest.fixture(scope="module")
def checkpoint_store(tmp_path_factory, _empty_store):
    """One store for every damaged-checkpoint case."""
    import shutil

    folder = tmp_path_factory.mktemp("checkpoints")
    shutil.copy(_empty_store, folder / "mlflow.db")
    return folder, f"sqlite:///{folder / 'mlflow.db'}"


def _logged_run(tmp_path, uri: str, corrupt: str) -> str:
    """A run with a checkpoint/ and config.yaml as `hyperlab train` logs them, damaged as ``corrupt`` says."""
    from hyperlab.config_io import validate
    from hyperlab.models import DataShape, build_model
    from hyperlab.training.config import TrainConfig
    from hyperlab.training.data_cache import corpus

    config = dict(QUICK_CONFIG)
    torch.manual_seed(0)
    vocab = corpus("bundled").vocab_size
    model = build_model(validate(TrainConfig, config).model, DataShape(vocab_size=vocab))
    state = model.state_dict()
    folder = tmp_path / corrupt / "checkpoint"
    folder.mkdir(parents=True)
    if corrupt == "nan-weights":
        state["softmax.weight"][0, 0] = float("nan")
    if corrupt == "wrong-shapes":
        state["softmax.weight"] = torch.zeros(3, 3)
    torch.save(state, folder / "model.pt")
    if corrupt == "truncated":
        data = (folder / "model.pt").read_bytes()
        (folder / "model.pt").write_bytes(data[: len(data) // 2])
    if corrupt == "random-bytes":
        (folder / "model.pt").write_bytes(os.urandom(4096))
    if corrupt == "code-in-pickle":  # what weights_only refuses: a pickle that calls os.system
        (folder / "model.pt").write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    if corrupt == "edited-config":
        config = {**config, "model": {**config["model"], "hidden_size": "eight"}}
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment(f"e-{corrupt}")).info.run_id
    client.log_artifacts(run, str(folder), "checkpoint")
    client.log_text(run, yaml.safe_dump(config), "config.yaml")
    return run


@pytest.mark.parametrize("corrupt, expected", [
    ("truncated", r"model\.pt is not a readable checkpoint"),
    ("random-bytes", r"model\.pt is not a readable checkpoint"),
    ("code-in-pickle", r"model\.pt is not a readable checkpoint"),
    ("wrong-shapes", r"model\.pt does not fit its config \(Error\(s\) in loading state_dict"),
    ("edited-config", r"config\.yaml: model\.hidden_size: Input should be a valid integer \(got 'eight'\)"),
    ("nan-weights", r"model\.pt holds NaN or infinite weights \(softmax\.weight\)"),
])
def test_a_damaged_checkpoint_is_one_clear_line(corrupt, expected, checkpoint_store, tmp_path, capsys, private_cache):
    folder, uri = checkpoint_store
    run = _logged_run(folder, uri, corrupt)
    out = tmp_path / "samples"
    assert main(["sample", run, "--tracking-uri", uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(expected, err[0]) and f"run {run}" in err[0], err
    assert not out.exists() and not (folder / "pwned").exists()


@pytest.mark.parametrize("flag, value, expected", [
    ("--temperature", "nan", "argument --temperature: expected a finite number > 0, got 'nan'"),
    ("--temperature", "0", "argument --temperature: expected a finite number > 0, got '0'"),
    ("--temperature", "inf", "argument --temperature: expected a finite number > 0, got 'inf'"),
    ("--length", "0", "argument --length: expected an integer >= 1, got '0'"),
])
def test_bad_sample_flags_are_one_line(flag, value, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "some-run", flag, value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"hyperlab sample: error: {expected}"]


# ---- output paths, names, manifests ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "sample", "pareto", "compare"])
@pytest.mark.parametrize("where", ["a-file", "missing-parent"])
def test_out_that_is_a_file_or_in_a_missing_folder(command, where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "taken" if where == "a-file" else tmp_path / "no" / "such" / ("front.csv" if command == "pareto" else "out")
    if where == "a-file" and command == "pareto":
        out = tmp_path / "taken.csv"
        out.mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    argv = {"train": ["train", str(REPO / "pipelines" / "quick_charlm.yaml")], "sample": ["sample", "run"],
            "pareto": ["pareto", "search"], "compare": ["compare", "a", "b"]}[command]
    assert main([*argv, "--out", str(out), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    reason = ("is a file; expected a folder" if command != "pareto" else "is a folder; expected a file name") \
        if where == "a-file" else "does not exist"
    assert len(err) == 1 and f"--out {out}" in err[0] and reason in err[0], err
    assert not (tmp_path / "store").exists()


def test_compare_of_one_search_twice(capsys):
    assert main(["compare", "ptb-a", "ptb-a", "--tracking-uri", "sqlite:////nonexistent/x.db"]) == 2
    assert "compare: 'ptb-a' named more than once" in capsys.readouterr().err


@pytest.mark.parametrize("manifest", ["{not json", '{"name": "m"}', "[1, 2]"])
def test_resume_with_a_damaged_manifest(manifest, mlflow_store, capsys):
    """The manifest on a search's parent run (what resume reads) edited into something else."""
    import json

    from hyperlab.tracking import layout

    client = mlflow.MlflowClient(mlflow_store)
    experiment = client.create_experiment("m")
    parent = client.create_run(experiment, tags={layout.TAG_SEARCH: "m", layout.TAG_ROLE: layout.ROLE_SEARCH,
                                                 layout.TAG_OBJECTIVES: json.dumps({"val/bpc": "min"})}).info.run_id
    client.log_text(parent, manifest, layout.MANIFEST_ARTIFACT)
    assert main(["resume", "m", "--tracking-uri", mlflow_store]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable search manifest" in err[0], err


def test_a_search_name_with_odd_characters(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(REPO / "tests" / "data" / "tiny_search.yaml"), "--name", "../escape"]) == 2
    assert "--name '../escape': use up to 100 letters" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # a search blocks SIGTERM while it runs (one thread waits for it); run in this process, it must not leave
    # the block behind, or every process started from here afterwards would inherit it and ignore SIGTERM
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


# ---- `hyperlab train` interrupted ----------------------------------------------------------------------------

def test_a_ctrl_c_that_python_drops_is_raised_again():
    """A Ctrl-C whose KeyboardInterrupt lands in a weakref callback is dropped by Python ("Exception
    ignored in ..."); during `hyperlab train` it is raised again at the next step, and the command stops."""
    import weakref

    from hyperlab.cli.train import _StickyInterrupts

    class Thing:
        pass

    dropped = []

    def callback(_):
        dropped.append(True)
        signal.raise_signal(signal.SIGINT)  # the handler runs here, inside the callback: its exception is dropped
        sum(range(1000))

    interrupts = _StickyInterrupts()
    interrupts.install()
    try:
        interrupts.check()  # nothing came: nothing raised
        thing = Thing()
        ref = weakref.ref(thing, callback)  # noqa: F841 - kept alive so that its callback runs
        del thing
        assert dropped == [True]
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()  # the next step
    finally:
        interrupts.uninstall()
    interrupts.check()  # acted on: not raised again
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.integration
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_train_marks_its_run_killed(signum, code, mlflow_store, tmp_path):
    """Killed mid-training (after its first evaluation), `hyperlab train` ends its MLflow run as KILLED,
    prints one line instead of a traceback and exits 128 + the signal's number."""
    uri = mlflow_store
    pipeline = tmp_path / "long.yaml"
    config = yaml.safe_load((REPO / "pipelines" / "quick_charlm.yaml").read_text())
    config["schedule"] = {"steps": 100_000, "eval_every": 5, "eval_batches": 1, "test": False}
    pipeline.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a background child of a non-interactive shell ignores SIGINT: give it the default handler back
    driver = subprocess.Popen([sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, "
                               "signal.default_int_handler); from hyperlab.cli import main; sys.exit(main())",
                               "train", str(pipeline), "--tracking-uri", uri, "--out", str(tmp_path / "out")],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "out").glob("checkpoint-*")) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        driver.send_signal(signum)
        stdout, stderr = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == code, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("hyperlab train: ")
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("hyperlab-train").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["hyperlab.outcome"] == "interrupted"
    assert f"run {run.info.run_id} marked KILLED" in stdout


def test_an_interrupt_during_a_store_write_comes_after_it():
    from hyperlab.cli.train import _StickyInterrupts

    interrupts, written = _StickyInterrupts(), []
    interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.deferred():
                signal.raise_signal(signal.SIGINT)
                sum(range(1000))  # the handler has run: nothing raised inside the write
                written.append("the whole write")
    finally:
        interrupts.uninstall()
    assert written == ["the whole write"]
