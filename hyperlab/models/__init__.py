"""Models: HyperLSTM and its baselines, character models, static hyper-convnets, parameter reports."""

from hyperlab.models.char_rnn import CELLS, CharRNN
from hyperlab.models.convnets import MnistConvNet, WideResNet
from hyperlab.models.hyperlstm import HyperLSTM, HyperLSTMCell
from hyperlab.models.lstm import LSTM, LayerNormLSTM, paper_torch_lstm
from hyperlab.models.registry import MODELS, build_model, model_arguments
from hyperlab.models.report import parameter_report, size_model
from hyperlab.models.state import detach_state
from hyperlab.models.static_hyper import GeneratedConv2d, KernelGenerator

__all__ = [
    "CELLS", "CharRNN", "GeneratedConv2d", "HyperLSTM", "HyperLSTMCell", "KernelGenerator", "LSTM",
    "LayerNormLSTM", "MODELS", "MnistConvNet", "WideResNet", "build_model", "detach_state",
    "model_arguments", "paper_torch_lstm", "parameter_report", "size_model",
]
