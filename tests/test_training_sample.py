"""sample(): deterministic by seed, activity equal to a teacher-forced reference, one entry per token
(also for a byte-level corpus); the activity figure."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from hyperlab.data import load_corpus
from hyperlab.models import CharRNNConfig, DataShape, build_model
from hyperlab.training import activity_figure, sample
from hyperlab.training.generate import token_strings

from conftest import pin_stand_in

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def corpus(private_cache):
    return load_corpus("bundled")


def char_model(corpus, cell: str = "ln_hyperlstm", num_layers: int = 2):
    torch.manual_seed(0)
    model = build_model(CharRNNConfig(cell=cell, hidden_size=24, hyper_size=8, n_z=4, num_layers=num_layers,
                                      dropout=0.1), DataShape(vocab_size=corpus.vocab_size))
    with torch.no_grad():  # move the hyper cells off their initial point, so d_h changes with the input
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.train()  # sample() must switch dropout off itself


def test_same_seed_same_text_and_activity(corpus):
    model = char_model(corpus)
    text_a, tokens_a, act_a = sample(model, corpus, 80, temperature=0.8, primer="ROMEO:", seed=3)
    text_b, _, act_b = sample(model, corpus, 80, temperature=0.8, primer="ROMEO:", seed=3)
    text_c, _, _ = sample(model, corpus, 80, temperature=0.8, primer="ROMEO:", seed=4)
    assert text_a == text_b and np.array_equal(act_a, act_b)
    assert text_c != text_a and len(text_a) == 80 and "".join(tokens_a) == text_a
    assert model.training  # the caller's mode is restored
    assert act_a.shape == (80, 4) and np.isfinite(act_a).all() and (act_a > 0).all()


def test_activity_is_the_step_to_step_change_of_the_last_layers_d_h(corpus):
    model = char_model(corpus)
    primer = "To be"
    text, _, activity = sample(model, corpus, 30, primer=primer, seed=0)
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
    activity = sample(char_model(corpus, num_layers=1), corpus, 10, seed=0).activity
    assert np.array_equal(activity[0], np.zeros(4)) and (activity[1:] > 0).all()


def test_models_without_a_hyper_cell_give_no_activity(corpus):
    text, tokens, activity = sample(char_model(corpus, cell="ln_lstm"), corpus, 12, seed=0)
    assert activity is None and len(text) == len(tokens) == 12


def test_activity_figure_writes_a_png(tmp_path, corpus):
    _, tokens, activity = sample(char_model(corpus), corpus, 150, seed=1)
    path = activity_figure(tokens, activity, tmp_path / "fig" / "activity.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image
    width, height = Image.open(path).size
    assert width > 600 and height > 200  # 150 characters: at least three lines of four bands
    with pytest.raises(ValueError, match=r"\(150, 4\)"):
        activity_figure(tokens, activity[:-1], tmp_path / "bad.png")


@pytest.fixture
def byte_corpus(tmp_path, private_cache, monkeypatch):
    """An enwik8 stand-in: bytes of text with two- and three-byte UTF-8 characters."""
    words = ["<page>", "Zürich", "naïve", "東京", "&amp;", "\n"]
    payload = " ".join(words[k] for k in np.random.default_rng(0).integers(0, 6, 1500)).encode()
    (tmp_path / "data" / "enwik8").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "data" / "enwik8" / "enwik8.zip", "w") as archive:
        archive.writestr("enwik8", payload)
    pin_stand_in(monkeypatch, "enwik8", tmp_path / "data" / "enwik8" / "enwik8.zip")
    return load_corpus("enwik8", tmp_path / "data")


def test_byte_tokens_show_each_character_on_its_first_byte(byte_corpus):
    ids = byte_corpus.encode("Zü東")  # 1 + 2 + 3 bytes
    assert len(ids) == 6
    assert token_strings(byte_corpus, ids.tolist()) == ["Z", "ü", "", "東", "", ""]
    broken = [ids[2], ids[0], ids[3], ids[4], ids[1]]  # a stray continuation byte, 東 cut short, a lone lead
    assert token_strings(byte_corpus, [int(i) for i in broken]) == ["\ufffd", "Z", "\ufffd", "\ufffd", "\ufffd"]


class ScriptedModel(torch.nn.Module):
    """Emits the tokens of ``script`` in turn, whatever it reads; its last layer's d_h is step² everywhere."""

    def __init__(self, corpus, script: str, hidden_size: int = 3):
        super().__init__()
        self.ids, self.vocab_size, self.hidden_size = corpus.encode(script).tolist(), corpus.vocab_size, hidden_size
        self.unused = torch.nn.Parameter(torch.zeros(1))  # sample() finds the device from a parameter

    def forward(self, tokens, state=None, return_scales=False):
        step = state or 0
        logits = torch.full((1, 1, self.vocab_size), -1e9)  # (B, T, V)
        logits[0, 0, self.ids[step % len(self.ids)]] = 0.0
        d_h = torch.full((1, 1, 4, self.hidden_size), float(step) ** 2)  # (T, B, 4, H)
        return logits, step + 1, [{"d_h": d_h}]


def test_a_byte_level_sample_has_one_activity_row_and_one_figure_cell_per_byte(tmp_path, byte_corpus):
    script = "Zürich 東京\n"  # 10 characters, 15 bytes
    text, tokens, activity = sample(ScriptedModel(byte_corpus, script), byte_corpus, 15, seed=0)
    assert text == script and activity.shape == (15, 4)
    assert tokens == ["Z", "ü", "", "r", "i", "c", "h", " ", "東", "", "", "京", "", "", "\n"]
    # ||d_h(t) - d_h(t-1)|| over H=3 units: sqrt(3) (t² - (t-1)²) = sqrt(3) (2t - 1); 0 on the first step
    expected = np.sqrt(3) * np.r_[0, 2 * np.arange(1, 15) - 1]
    np.testing.assert_allclose(activity, np.repeat(expected[:, None], 4, axis=1), rtol=1e-6)
    path = activity_figure(tokens, activity, tmp_path / "activity.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"\(10, 4\)"):
        activity_figure(text, activity, tmp_path / "by_characters.png")  # characters are not tokens here


def test_a_trained_shape_byte_level_model_samples_one_row_per_byte(byte_corpus):
    text, tokens, activity = sample(char_model(byte_corpus), byte_corpus, 120, primer="Zürich", seed=2)
    assert len(tokens) == 120 and activity.shape == (120, 4) and np.isfinite(activity).all()
    assert 0 < len(text) <= 120
