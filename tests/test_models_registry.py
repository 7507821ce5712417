"""Registry, char model counts against the paper's tables, parameter reports on the meta device."""

import inspect
import time

import pytest
import torch

from hyperlab.errors import ConfigError
from hyperlab.models import CELLS, MODELS, CharRNN, build_model, detach_state, model_arguments, \
    parameter_report, size_model

PAPER_CHAR_COUNTS = [  # (cell, layers, n_z, millions) from the char-PTB table, vocabulary 50
    ("lstm", 1, 4, 4.25), ("ln_lstm", 1, 4, 4.26), ("hyperlstm", 1, 4, 4.91),
    ("ln_hyperlstm", 1, 4, 4.92), ("ln_hyperlstm", 2, 16, 14.41),
]  # the table's 1-layer n_z=16 row (5.06M) disagrees with PAPER.md's formula (5.09M): left out


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: extra threads only synchronise


@pytest.mark.parametrize("cell, layers, n_z, millions", PAPER_CHAR_COUNTS)
def test_char_rnn_counts_match_paper(cell, layers, n_z, millions):
    config = {"name": "char_rnn", "vocab_size": 50, "cell": cell, "hidden_size": 1000, "n_z": n_z,
              "num_layers": layers}
    assert round(size_model(config)["total"] / 1e6, 2) == millions


def test_size_model_equals_real_build_and_is_fast():
    configs = [{"name": "char_rnn", "vocab_size": 11, "cell": c, "hidden_size": 9, "hyper_size": 5,
                "num_layers": 2, "dropout": 0.1} for c in CELLS]
    configs += [{"name": "mnist_convnet", "hyper": True}, {"name": "wide_resnet", "depth": 16, "hyper": True}]
    for config in configs:
        assert size_model(config) == parameter_report(build_model(config))
    start = time.perf_counter()
    size_model({"name": "char_rnn", "vocab_size": 205, "cell": "ln_hyperlstm", "hidden_size": 2048,
                "hyper_size": 512, "n_z": 64, "num_layers": 2})
    assert time.perf_counter() - start < 0.5


def test_registry_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model\.n_zz: unknown key; expected one of .*n_z"):
        build_model({"name": "char_rnn", "vocab_size": 50, "cell": "lstm", "hidden_size": 8, "n_zz": 4})
    with pytest.raises(ConfigError, match=r"model\.name: unknown model 'gpt'"):
        build_model({"name": "gpt"})
    with pytest.raises(ConfigError, match=r"model\.hidden_size: required key is missing"):
        build_model({"name": "char_rnn", "vocab_size": 50, "cell": "lstm"})
    with pytest.raises(ConfigError, match=r"model\.cell: expected one of"):
        build_model({"name": "char_rnn", "vocab_size": 50, "cell": "gru", "hidden_size": 8})


def test_model_arguments_from_signature():
    args = model_arguments("char_rnn")
    assert args["n_z"] == 4 and args["hyper_size"] == 128 and args["dropout"] == 0.0
    assert args["vocab_size"] is inspect.Parameter.empty
    assert set(MODELS) >= {"char_rnn", "mnist_convnet", "wide_resnet"}


@pytest.mark.parametrize("cell", CELLS)
def test_char_rnn_interface_and_state_carry(cell):
    torch.manual_seed(0)
    model = CharRNN(13, cell, hidden_size=8, hyper_size=5, n_z=3, num_layers=2, dropout=0.2).eval()
    tokens = torch.randint(0, 13, (3, 10))
    logits, state = model(tokens)
    assert logits.shape == (3, 10, 13)
    first, state1 = model(tokens[:, :4])
    second, _ = model(tokens[:, 4:], detach_state(state1))
    torch.testing.assert_close(torch.cat([first, second], 1), logits)
    logits2, _, scales = model(tokens, return_scales=True)
    torch.testing.assert_close(logits2, logits)
    assert len(scales) == (2 if "hyper" in cell else 0)
    model.train()
    assert (model(tokens)[0] - logits).abs().max() > 1e-4  # dropout is on in training


@pytest.mark.parametrize("cell", ["hyperlstm", "ln_hyperlstm"])  # the hand-written backward, the eager one
def test_char_rnn_learns_a_repeating_sequence(cell, fit_batch):
    torch.manual_seed(0)
    model = CharRNN(5, cell, hidden_size=16, hyper_size=8, n_z=2)
    losses = fit_batch(model, torch.arange(24).remainder(5).view(2, 12), lr=0.02, steps=25)
    assert losses[-1] < 0.1 * losses[0]


def test_detach_state_nested():
    x = torch.ones(2, requires_grad=True) * 2
    out = detach_state([(x, x), {"a": x}])
    assert not out[0][0].requires_grad and not out[1]["a"].requires_grad
    torch.testing.assert_close(out[0][1], torch.full((2,), 2.0))
