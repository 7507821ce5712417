"""TrainConfig: errors name the file and the dotted key; overrides and flat params round-trip."""

from __future__ import annotations

import pytest
import yaml

from hyperlab.config_io import load_yaml, validate
from hyperlab.errors import ConfigError
from hyperlab.training import TrainConfig
from hyperlab.training.config import smoke_overrides

BASE = {
    "task": "charlm",
    "data": {"dataset": "bundled", "batch_size": 4, "seq_len": 8},
    "model": {"name": "char_rnn", "cell": "ln_hyperlstm", "hidden_size": 16, "hyper_size": 8, "n_z": 2},
    "schedule": {"steps": 10},
}


def _with(section: str, **changes) -> dict:
    return {**BASE, section: {**BASE[section], **changes}}


def _problems(data: dict, file: str = "run.yaml") -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        validate(TrainConfig, data, file)
    assert caught.value.file == file
    return dict(caught.value.problems)


def test_defaults_fill_the_optional_sections():
    config = validate(TrainConfig, BASE)
    assert (config.optim.lr, config.optim.clip, config.schedule.eval_every) == (1e-3, 1.0, 500)
    assert config.model.arguments() == {"cell": "ln_hyperlstm", "hidden_size": 16, "hyper_size": 8, "n_z": 2}


def test_unknown_keys_are_named_at_every_level():
    assert _problems({**BASE, "learning_rate": 1})["learning_rate"] == "unknown key"
    assert _problems(_with("schedule", every=3))["schedule.every"] == "unknown key"


def test_wrong_types_and_impossible_values_name_the_key():
    assert "schedule.steps" in _problems(_with("schedule", steps="many"))
    assert "data.batch_size" in _problems(_with("data", batch_size=0))
    assert "optim.lr" in _problems({**BASE, "optim": {"lr": -1.0}})
    assert "task" in _problems({**BASE, "task": "translate"})


def test_model_arguments_are_checked_against_the_builder():
    assert "not an argument of model 'char_rnn'" in _problems(_with("model", hiddensize=3))["model.hiddensize"]
    assert "filled from the data" in _problems(_with("model", vocab_size=50))["model.vocab_size"]
    missing = {k: v for k, v in BASE["model"].items() if k != "cell"}
    assert _problems({**BASE, "model": missing})["model.cell"] == "required key is missing"
    assert "positive integer" in _problems(_with("model", hidden_size=-3))["model.hidden_size"]
    assert "unknown model" in _problems(_with("model", name="transformer"))["model.name"]
    assert "6n+4" in _problems({**BASE, "task": "classify", "data": {"dataset": "cifar10"},
                                "model": {"name": "wide_resnet", "depth": 11}})["model.depth"]


def test_dataset_must_suit_the_task():
    assert "not a dataset for task 'charlm'" in _problems(_with("data", dataset="mnist"))["data.dataset"]


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "optim": {"momentum": 0.9}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: optim\.momentum: unknown key"):
        load_yaml(TrainConfig, path)


def test_flat_uses_dotted_keys():
    flat = validate(TrainConfig, BASE).flat()
    assert flat["model.n_z"] == 2 and flat["optim.lr"] == 1e-3 and flat["schedule.eval_batches"] is None
    assert flat["data.dataset"] == "bundled" and flat["task"] == "charlm"
    assert len(flat) == 19  # task, seed, device + 4 data + 5 model + 3 optim + 4 schedule


def test_with_overrides_replaces_and_revalidates():
    config = validate(TrainConfig, BASE)
    changed = config.with_overrides({"model.n_z": 8, "optim.lr": 3e-3, "model.num_layers": 2})
    assert (changed.model.arguments()["n_z"], changed.optim.lr, changed.model.arguments()["num_layers"]) == (8, 3e-3, 2)
    assert config.model.arguments()["n_z"] == 2  # the original is frozen and unchanged
    assert config.with_overrides(config.flat()) == config  # flat() round-trips


def test_with_overrides_errors_name_the_dotted_key():
    config = validate(TrainConfig, BASE)
    with pytest.raises(ConfigError) as caught:
        config.with_overrides({"optim.lr": "fast", "model.nz": 8, "seed.value": 1})
    problems = dict(caught.value.problems)
    assert set(problems) == {"optim.lr", "model.nz", "seed.value"}


def test_smoke_overrides_shrink_the_model_and_schedule():
    config = validate(TrainConfig, _with("model", hidden_size=1000, hyper_size=128))
    small = config.with_overrides(smoke_overrides(config, steps=4))
    assert small.model.arguments()["hidden_size"] == 32 and small.model.arguments()["hyper_size"] == 16
    assert (small.schedule.steps, small.schedule.eval_every, small.schedule.eval_batches) == (4, 2, 2)


def test_a_builders_own_error_names_every_model_key_given():
    data = {**BASE, "task": "classify", "data": {"dataset": "cifar10"},
            "model": {"name": "wide_resnet", "depth": 10, "widen": 1.5, "hyper": True, "n_z": 4}}
    assert _problems(data) == {"model": "'wide_resnet' rejected model.depth=10, model.widen=1.5, model.hyper=True, "
                                        "model.n_z=4: channels 24.0x16 are not a multiple of the 16x16 tile"}
