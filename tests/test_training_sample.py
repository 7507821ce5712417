"""sample(): deterministic by seed, activity equal to a teacher-forced reference; the activity figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyperlab.data import load_corpus
from hyperlab.models import build_model
from hyperlab.training import activity_figure, sample


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYPERLAB_CACHE_DIR", str(tmp_path_factory.mktemp("derived")))
        return load_corpus("bundled")


def char_model(corpus, cell: str = "ln_hyperlstm", num_layers: int = 2):
    torch.manual_seed(0)
    model = build_model({"name": "char_rnn", "cell": cell, "hidden_size": 24, "hyper_size": 8, "n_z": 4,
                         "num_layers": num_layers, "dropout": 0.1, "vocab_size": corpus.vocab_size})
    with torch.no_grad():  # move the hyper cells off their initial point, so d_h changes with the input
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.train()  # sample() must switch dropout off itself


def test_same_seed_same_text_and_activity(corpus):
    model = char_model(corpus)
    text_a, act_a = sample(model, corpus, 80, temperature=0.8, primer="ROMEO:", seed=3)
    text_b, act_b = sample(model, corpus, 80, temperature=0.8, primer="ROMEO:", seed=3)
    text_c, _ = sample(model, corpus, 80, temperature=0.8, primer="ROMEO:", seed=4)
    assert text_a == text_b and np.array_equal(act_a, act_b)
    assert text_c != text_a and len(text_a) == 80
    assert model.training  # the caller's mode is restored
    assert act_a.shape == (80, 4) and np.isfinite(act_a).all() and (act_a > 0).all()


def test_activity_is_the_step_to_step_change_of_the_last_layers_d_h(corpus):
    model = char_model(corpus)
    primer = "To be"
    text, activity = sample(model, corpus, 30, primer=primer, seed=0)
    # reference: one teacher-forced pass over primer + text, all steps at once
    tokens = torch.as_tensor(corpus.encode(primer + text[:-1]))[None]  # (1, T)
    model.eval()
    with torch.no_grad():
        _, _, scales = model(tokens, None, return_scales=True)
    d_h = scales[-1]["d_h"][:, 0]  # (T, 4, H), last layer
    change = (d_h[1:] - d_h[:-1]).norm(dim=-1).numpy()  # (T-1, 4): row k is d_h(k+1) - d_h(k)
    # the first generated character comes from the step reading the primer's last character (P-1)
    np.testing.assert_allclose(activity, change[len(primer) - 2:], rtol=1e-4, atol=1e-6)


def test_without_primer_the_first_change_is_zero(corpus):
    _, activity = sample(char_model(corpus, num_layers=1), corpus, 10, seed=0)
    assert np.array_equal(activity[0], np.zeros(4)) and (activity[1:] > 0).all()


def test_models_without_a_hyper_cell_give_no_activity(corpus):
    text, activity = sample(char_model(corpus, cell="ln_lstm"), corpus, 12, seed=0)
    assert activity is None and len(text) == 12


def test_activity_figure_writes_a_png(tmp_path, corpus):
    text, activity = sample(char_model(corpus), corpus, 150, seed=1)
    path = activity_figure(text, activity, tmp_path / "fig" / "activity.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image
    width, height = Image.open(path).size
    assert width > 600 and height > 200  # 150 characters: at least three lines of four bands
    with pytest.raises(ValueError, match=r"\(150, 4\)"):
        activity_figure(text, activity[:-1], tmp_path / "bad.png")
