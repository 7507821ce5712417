"""The trainable model families by name: each name's typed config, which builds the model."""

from __future__ import annotations

from typing import Annotated

import pydantic
import torch
from torch import nn

from hyperlab.models.char_rnn import CharRNNConfig
from hyperlab.models.config import DataShape, ModelConfig
from hyperlab.models.convnets import MnistConvNetConfig, WideResNetConfig
from hyperlab.models.handwriting import HandwritingRNNConfig

MODELS: dict[str, type[ModelConfig]] = {
    "char_rnn": CharRNNConfig,
    "mnist_convnet": MnistConvNetConfig,
    "wide_resnet": WideResNetConfig,
    "handwriting_rnn": HandwritingRNNConfig,
}

AnyModelConfig = Annotated[CharRNNConfig | MnistConvNetConfig | WideResNetConfig | HandwritingRNNConfig,
                           pydantic.Field(discriminator="name")]
"""The ``model:`` section of a training config: one of the families, told apart by ``name``."""


def build_model(config: ModelConfig, data: DataShape) -> nn.Module:
    """The model of a validated config, with the arguments that come from the data."""
    return config.build(data)


def size_model(config: ModelConfig, data: DataShape) -> dict:
    """``parameter_report`` of the model built on the meta device: no memory, milliseconds."""
    from hyperlab.models.report import parameter_report

    with torch.device("meta"):
        model = config.build(data)
    return parameter_report(model)
