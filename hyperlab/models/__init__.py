"""Models: HyperLSTM and its baselines, character models, static hyper-convnets, parameter reports."""

from hyperlab.models.char_rnn import CELLS, CharRNN, CharRNNConfig
from hyperlab.models.config import DataShape, ModelConfig
from hyperlab.models.convnets import MnistConvNet, MnistConvNetConfig, WideResNet, WideResNetConfig
from hyperlab.models.hyperlstm import HyperLSTM, HyperLSTMCell
from hyperlab.models.lstm import LSTM, LayerNormLSTM, paper_torch_lstm
from hyperlab.models.registry import MODELS, AnyModelConfig, build_model, size_model
from hyperlab.models.report import parameter_report
from hyperlab.models.state import detach_state
from hyperlab.models.static_hyper import GeneratedConv2d, KernelGenerator


def cpu_kernels_built() -> bool:
    """Whether this machine has the C++ cell loops built for this version (or does without them)."""
    from hyperlab.models import _ext

    return _ext.is_built()


def build_cpu_kernels() -> bool:
    """Build (or load) the C++ cell loops; False when they cannot be built (the PyTorch code serves)."""
    from hyperlab.models import _ext

    return _ext.kernels() is not None


def prepare_kernels(model, device) -> None:
    """Build (once per machine) or load the C++ cell loops a HyperLSTM on the CPU runs on, now rather
    than inside its first forward pass (where a first-time build would count as training time)."""
    import torch

    if torch.device(device).type == "cpu" and any(isinstance(m, HyperLSTM) for m in model.modules()):
        build_cpu_kernels()


__all__ = [
    "CELLS", "AnyModelConfig", "CharRNN", "CharRNNConfig", "DataShape", "GeneratedConv2d", "HyperLSTM",
    "HyperLSTMCell", "KernelGenerator", "LSTM", "LayerNormLSTM", "MODELS", "MnistConvNet", "MnistConvNetConfig",
    "ModelConfig", "WideResNet", "WideResNetConfig", "build_model", "detach_state", "paper_torch_lstm",
    "build_cpu_kernels", "cpu_kernels_built", "parameter_report", "prepare_kernels", "size_model",
]
