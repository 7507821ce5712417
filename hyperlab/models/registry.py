"""Model builders by name, and validated construction from a config dict."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from hyperlab.errors import ConfigError
from hyperlab.models.char_rnn import CharRNN
from hyperlab.models.convnets import MnistConvNet, WideResNet
from hyperlab.models.hyperlstm import HyperLSTM
from hyperlab.models.lstm import LSTM, LayerNormLSTM

MODELS: dict[str, type[nn.Module]] = {
    "char_rnn": CharRNN,
    "mnist_convnet": MnistConvNet,
    "wide_resnet": WideResNet,
    "hyperlstm": HyperLSTM,
    "lstm": LSTM,
    "ln_lstm": LayerNormLSTM,
}


def _builder(name: Any) -> type[nn.Module]:
    if name not in MODELS:
        raise ConfigError(None, [("model.name", f"unknown model {name!r}; expected one of {', '.join(MODELS)}")])
    return MODELS[name]


def model_arguments(name: str) -> dict[str, Any]:
    """Keyword arguments of model ``name`` and their defaults (``inspect.Parameter.empty`` if required)."""
    params = inspect.signature(_builder(name)).parameters
    return {key: p.default for key, p in params.items() if key != "self"}


def build_model(config: dict) -> nn.Module:
    """Build ``MODELS[config["name"]](**rest)``; unknown or missing keys raise ConfigError naming them."""
    if "name" not in config:
        raise ConfigError(None, [("model.name", f"required key is missing; expected one of {', '.join(MODELS)}")])
    kwargs = {k: v for k, v in config.items() if k != "name"}
    arguments = model_arguments(config["name"])
    problems = [(f"model.{key}", f"unknown key; expected one of {', '.join(arguments)}")
                for key in kwargs if key not in arguments]
    problems += [(f"model.{key}", "required key is missing")
                 for key, default in arguments.items()
                 if default is inspect.Parameter.empty and key not in kwargs]
    if problems:
        raise ConfigError(None, problems)
    return MODELS[config["name"]](**kwargs)
