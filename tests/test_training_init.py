"""The initialisation training starts from: W_x glorot-uniform over the whole (4H, N_in) matrix, as the
paper's reference code (supercell.py) does, in every LSTM-type layer."""

from __future__ import annotations

import math

import pytest
import torch

from hyperlab.models.hyperlstm import HyperLSTMCell
from hyperlab.models.lstm import LSTMLayer, paper_torch_lstm

H, N_IN, HYPER = 250, 300, 64
WHOLE_MATRIX_BOUND = math.sqrt(6 / (N_IN + 4 * H))  # 0.0679; per gate it would be sqrt(6/(N_in+H)) = 0.104


def _weights_x():
    torch.manual_seed(0)
    cell = HyperLSTMCell(N_IN, H, hyper_size=HYPER, n_z=4)
    return {
        "LSTMLayer": (LSTMLayer(N_IN, H).weight_x, WHOLE_MATRIX_BOUND),
        "HyperLSTMCell main W_x": (cell.weight_x, WHOLE_MATRIX_BOUND),
        # the hyper cell reads [x ; h]: its W_x is (4 Ĥ, N_in + H)
        "hyper cell W_[x;h]": (cell.hyper.weight_x, math.sqrt(6 / (N_IN + H + 4 * HYPER))),
        "paper_torch_lstm": (paper_torch_lstm(N_IN, H).weight_ih_l0, WHOLE_MATRIX_BOUND),
    }


@pytest.mark.parametrize("name", list(_weights_x()))
def test_input_weights_are_glorot_uniform_over_the_whole_matrix(name):
    weight, bound = _weights_x()[name]
    largest = weight.detach().abs().max().item()
    assert largest <= bound and largest > 0.999 * bound  # 300k draws reach the edge of [-b, b]
    assert weight.detach().var().item() == pytest.approx(bound ** 2 / 3, rel=0.02)  # variance of U(-b, b)
    assert abs(weight.detach().mean().item()) < 0.01 * bound
