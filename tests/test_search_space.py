"""Search spaces: every shipped file loads; bad files give exit code 2, a message naming the file and
the key, and create nothing."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
import yaml

from hyperlab.cli import main
from hyperlab.errors import ConfigError
from hyperlab.search.space import load_search_space

from conftest import REPO

TINY = REPO / "tests" / "data" / "tiny_search.yaml"


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_search_spaces_load(path):
    space, base = load_search_space(path)
    assert space.trials >= 1 and base.task == space.task and base.model.name == space.model
    for key in space.space:  # every searched key reaches the training config
        assert key in base.flat()


def test_optuna_distributions_are_passed_as_written():
    space, _ = load_search_space(TINY)
    dists = space.distributions()
    # Optuna's own IntDistribution keeps both bounds inclusive (Tune's randint would shift the top one)
    assert dists["model.hidden_size"] == optuna.distributions.IntDistribution(8, 48, log=True)
    assert dists["model.n_z"] == optuna.distributions.IntDistribution(1, 4)


def _tiny() -> dict:
    return yaml.safe_load(TINY.read_text())


def _with(change) -> dict:
    data = _tiny()
    change(data)
    return data


BAD = {
    "unknown top-level key": (_with(lambda d: d.update(trails=8)), "trails", "unknown key"),
    "wrong type": (_with(lambda d: d.update(trials="many")), "trials", "integer"),
    "inverted int range": (_with(lambda d: d["space"].update({"model.n_z": {"type": "int", "low": 8, "high": 2}})),
                           "space.model.n_z", "empty or inverted range"),
    "empty float range": (_with(lambda d: d["space"].update({"optim.lr": {"type": "float", "low": 0.1, "high": 0.1}})),
                          "space.optim.lr", "empty or inverted range"),
    "log scale from zero": (_with(lambda d: d["space"].update(
        {"optim.lr": {"type": "float", "low": 0, "high": 0.1, "log": True}})), "space.optim.lr", "log scale needs low > 0"),
    "empty choice": (_with(lambda d: d["space"].update({"model.cell": {"type": "choice", "values": []}})),
                     "space.model.cell.values", "at least 1"),
    "unknown param type": (_with(lambda d: d["space"].update({"model.n_z": {"type": "integer", "low": 1, "high": 2}})),
                           "space.model.n_z.type", "unknown 'integer'; expected one of 'int', 'float', 'choice'"),
    "unknown model": (_with(lambda d: d.update(model="transformer")), "model", "unknown model 'transformer'"),
    "unknown objective": (_with(lambda d: d["objectives"].update({"val/ppl": "min"})), "objectives", "unknown objective"),
    "wrong direction": (_with(lambda d: d["objectives"].update({"val/bpc": "max"})), "objectives", "minimised"),
    "unknown model argument in space": (_with(lambda d: d["space"].update(
        {"model.n_zz": {"type": "int", "low": 1, "high": 2}})), "space.model.n_zz", "not a key of model; expected one of"),
    "space key outside the training config": (_with(lambda d: d["space"].update(
        {"trainer.lr": {"type": "float", "low": 0.1, "high": 0.2}})), "space.trainer.lr", "not a key of the training config"),
    "bad fixed value": (_with(lambda d: d["fixed"]["optim"].update(lr=-1)), "fixed.optim.lr", "greater than 0"),
    "dataset of the other task": (_with(lambda d: d["fixed"]["data"].update(dataset="mnist")),
                                  "fixed.data.dataset", "not a dataset for task"),
    "unknown sampler": (_with(lambda d: d.update(sampler={"name": "cmaes"})), "sampler.name", "tpe"),
    "unknown early-stopping metric": (_with(lambda d: d.update(early_stopping={"metric": "val/ppl"})),
                                      "early_stopping.metric", "unknown metric"),
    "moasha with one metric": (_with(lambda d: d.update(early_stopping={"rule": "moasha", "metric": "val/bpc"})),
                               "", "early_stopping.metric: rule moasha ranks the objectives"),
    "asha without its metric": (_with(lambda d: d.update(early_stopping={"rule": "asha"})),
                                "", "early_stopping.metric: rule asha compares one metric"),
    "unknown early-stopping rule": (_with(lambda d: d.update(early_stopping={"rule": "hyperband"})),
                                    "early_stopping.rule", "'moasha' or 'asha'"),
    "negative gpu": (_with(lambda d: d.update(resources={"gpu": -1})), "resources.gpu", "greater than or equal to 0"),
    "objective the task does not report": (_with(lambda d: d["objectives"].update({"val/acc": "max"})),
                                           "objectives", "val/acc is not reported by charlm training"),
    "test objective without a test run": (_with(lambda d: d["objectives"].update({"test/bpc": "min"})),
                                          "objectives", "test/bpc is not reported"),
    "not a mapping": ([1, 2, 3], "", "expected a mapping"),
    "cuda without a gpu share": (_with(lambda d: d["fixed"].update(device="cuda")), "", "no GPU share"),
    "every configuration over budget": (_with(lambda d: d.update(budget={"max_params": 100})),
                                        "budget.max_params", "no configuration of the space fits the budget"),
    "search key naming a section": (_with(lambda d: d["space"].update(
        {"optim": {"type": "float", "low": 0.1, "high": 0.2}})), "space.optim", "a section, not a value"),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=str)
def test_bad_search_space_exits_2_naming_file_and_key(case, tmp_path, monkeypatch, capsys):
    data, key, fragment = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store" / "mlflow.db"
    code = main(["search", str(path), "--tracking-uri", f"sqlite:///{store}"])
    err = capsys.readouterr().err
    assert code == 2
    line = next(line for line in err.splitlines() if fragment in line)
    assert f"{path}: {key}: " in line or (not key and str(path) in line), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing started or written


def test_yaml_syntax_error_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("task: charlm\nspace: {model.n_z: [1, 2\n")
    assert main(["validate", str(path)]) == 2
    assert f"{path}: not valid YAML" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml: no such file" in capsys.readouterr().err


def test_validate_command_through_the_console_script(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(BAD["inverted int range"][0]))
    out = subprocess.run([sys.executable, "-m", "hyperlab.cli", "validate", str(TINY), str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout.strip() == f"ok  {TINY}"  # one bad file fails the run
    assert out.stderr.strip() == (f"hyperlab validate: error: {bad}: space.model.n_z: empty or inverted range: "
                                  "low (8) must be below high (2)")


def test_extreme_values_of_the_space_are_checked(tmp_path):
    data = _tiny()
    data["space"]["model.cell"] = {"type": "choice", "values": ["hyperlstm", "gru"]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_search_space(path)
    assert err.value.problems[0][0] == "space.model.cell"
