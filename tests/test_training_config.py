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
    assert config.model.model_dump() == {"name": "char_rnn", "cell": "ln_hyperlstm", "hidden_size": 16,
                                         "hyper_size": 8, "n_z": 2, "num_layers": 1, "dropout": 0.0}


def test_unknown_keys_are_named_at_every_level():
    assert _problems({**BASE, "learning_rate": 1})["learning_rate"] == "unknown key"
    assert _problems(_with("schedule", every=3))["schedule.every"] == "unknown key"


def test_wrong_types_and_impossible_values_name_the_key():
    assert "schedule.steps" in _problems(_with("schedule", steps="many"))
    assert "data.batch_size" in _problems(_with("data", batch_size=0))
    assert "optim.lr" in _problems({**BASE, "optim": {"lr": -1.0}})
    assert "task" in _problems({**BASE, "task": "translate"})


def test_model_keys_are_checked_against_the_family_config():
    assert _problems(_with("model", hiddensize=3))["model.hiddensize"] == "unknown key"
    assert _problems(_with("model", vocab_size=50))["model.vocab_size"] == "unknown key"  # from the data
    missing = {k: v for k, v in BASE["model"].items() if k != "cell"}
    assert _problems({**BASE, "model": missing})["model.cell"] == "required key is missing"
    assert "greater than 0" in _problems(_with("model", hidden_size=-3))["model.hidden_size"]
    assert "unknown 'transformer'" in _problems(_with("model", name="transformer"))["model.name"]
    assert "6n+4" in _problems({**BASE, "task": "classify", "data": {"dataset": "cifar10"},
                                "model": {"name": "wide_resnet", "depth": 11}})["model.depth"]
    assert "finite number" in _problems({**BASE, "optim": {"lr": float("inf")}})["optim.lr"]
    assert "valid integer" in _problems(_with("model", widen=1.5, name="wide_resnet"))["model.widen"]


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
    assert len(flat) == 22  # task, seed, device + 5 data + 7 model + 3 optim + 4 schedule


def test_with_overrides_replaces_and_revalidates():
    config = validate(TrainConfig, BASE)
    changed = config.with_overrides({"model.n_z": 8, "optim.lr": 3e-3, "model.num_layers": 2})
    assert (changed.model.n_z, changed.optim.lr, changed.model.num_layers) == (8, 3e-3, 2)
    assert config.model.n_z == 2  # the original is frozen and unchanged
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
    assert small.model.hidden_size == 32 and small.model.hyper_size == 16
    assert (small.schedule.steps, small.schedule.eval_every, small.schedule.eval_batches) == (4, 2, 2)


def test_dotted_keys_are_checked_against_the_typed_fields():
    from hyperlab.training.config import unknown_key

    assert unknown_key("model.n_z", "char_rnn") is None and unknown_key("optim.lr", "char_rnn") is None
    assert unknown_key("model.depth", "wide_resnet") is None
    assert "not a key of model" in unknown_key("model.depth", "char_rnn")
    assert "not a key of the training config" in unknown_key("optimiser.lr", "char_rnn")
    assert "a section, not a value" in unknown_key("optim", "char_rnn")
    assert "seed is a value, not a section" in unknown_key("seed.value", "char_rnn")
    assert "fixed by" in unknown_key("model.name", "char_rnn") and "fixed by" in unknown_key("task", "char_rnn")
