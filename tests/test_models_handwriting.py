"""The handwriting model and its data: parameter counts against the paper's, the mixture's log-likelihood
against torch.distributions, sampling against the mixture's moments, and IAM-OnDB's preparation on small
hand-made line files and on the real database."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hyperlab.data import strokes
from hyperlab.errors import UserError
from hyperlab.models.config import DataShape
from hyperlab.models.handwriting import HandwritingRNN, HandwritingRNNConfig, point_log_likelihood, sample_point
from hyperlab.models.registry import size_model


def closed_form(cell: str, hidden: int = 900, hyper: int = 128, n_z: int = 4, inputs: int = 3, outputs: int = 121):
    """PAPER.md section 1's count for one layer, plus the mixture's linear layer."""
    lstm = 4 * hidden * (inputs + hidden + 1)
    hyper_part = 4 * hyper * (inputs + hidden + hyper + 1) + 12 * n_z * (hyper + hidden) + 8 * n_z
    count = {"lstm": lstm, "ln_lstm": 4 * hidden * (inputs + hidden) + 10 * hidden, "hyperlstm": lstm + hyper_part,
             "ln_hyperlstm": lstm + hyper_part + 10 * hidden + 10 * hyper}[cell]
    return count + hidden * outputs + outputs


@pytest.mark.parametrize("cell, paper", [("lstm", 3.36e6), ("ln_lstm", 3.37e6), ("hyperlstm", 3.94e6),
                                         ("ln_hyperlstm", 3.95e6)])
def test_parameter_counts_are_the_papers(cell, paper):
    report = size_model(HandwritingRNNConfig(cell=cell, hidden_size=900), DataShape())
    assert report["total"] == closed_form(cell)
    assert round(report["total"] / 1e4) * 1e4 == paper  # the table's 3.36M, 3.37M, 3.94M, 3.95M


def random_params(batch: int, mixtures: int, generator: torch.Generator) -> dict:
    log_weight = torch.log_softmax(torch.randn(batch, mixtures, generator=generator), -1)
    return {"log_weight": log_weight, "mean": torch.randn(batch, mixtures, 2, generator=generator),
            "log_std": 0.5 * torch.randn(batch, mixtures, 2, generator=generator),
            "rho": 0.95 * torch.tanh(torch.randn(batch, mixtures, generator=generator)),
            "eos_logit": torch.randn(batch, generator=generator)}


def test_the_log_likelihood_equals_torch_distributions():
    from torch.distributions import Bernoulli, Categorical, MixtureSameFamily, MultivariateNormal

    g = torch.Generator().manual_seed(0)
    params = {k: v.double() for k, v in random_params(64, 20, g).items()}
    params["log_weight"] = torch.log_softmax(params["log_weight"], -1)  # normalised in float64 too
    target = torch.cat([torch.randn(64, 2, generator=g), torch.randint(0, 2, (64, 1), generator=g)], -1).double()
    std, rho = params["log_std"].exp(), params["rho"]
    cov = torch.stack([torch.stack([std[..., 0] ** 2, rho * std[..., 0] * std[..., 1]], -1),
                       torch.stack([rho * std[..., 0] * std[..., 1], std[..., 1] ** 2], -1)], -2)
    mixture = MixtureSameFamily(Categorical(logits=params["log_weight"]), MultivariateNormal(params["mean"], cov))
    expected = mixture.log_prob(target[:, :2]) + Bernoulli(logits=params["eos_logit"]).log_prob(target[:, 2])
    assert torch.allclose(point_log_likelihood(params, target), expected, rtol=1e-10, atol=1e-10)


def test_the_log_likelihood_stays_finite_at_the_edges():
    """Correlations at the clamp, spreads at their floor, far targets: finite, with finite gradients."""
    model = HandwritingRNN("hyperlstm", 16, 8, 2)
    with torch.no_grad():
        model.mixture.linear.bias.copy_(torch.cat([torch.zeros(20), torch.zeros(40), torch.full((40,), -50.0),
                                                   torch.full((20,), 30.0), torch.tensor([60.0])]))
    points = torch.tensor([[[0.0, 0.0, 0.0], [1e3, -1e3, 1.0], [0.0, 0.0, 0.0]]])
    nll = model.sequence_nll(points)
    nll.sum().backward()
    assert torch.isfinite(nll).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_samples_have_the_mixtures_moments():
    g = torch.Generator().manual_seed(1)
    n = 40000
    params = {"log_weight": torch.zeros(n, 1), "mean": torch.tensor([1.0, -2.0]).expand(n, 1, 2),
              "log_std": torch.log(torch.tensor([0.5, 2.0])).expand(n, 1, 2), "rho": torch.full((n, 1), 0.6),
              "eos_logit": torch.full((n,), math.log(0.2 / 0.8))}
    points = sample_point(params, g)
    assert points[:, :2].mean(0).tolist() == pytest.approx([1.0, -2.0], abs=0.03)
    cov = torch.cov(points[:, :2].T)
    assert cov[0, 0].item() == pytest.approx(0.25, rel=0.03) and cov[1, 1].item() == pytest.approx(4.0, rel=0.03)
    assert (cov[0, 1] / cov.diag().sqrt().prod()).item() == pytest.approx(0.6, abs=0.02)
    assert points[:, 2].mean().item() == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize("cell", ["lstm", "ln_hyperlstm"])
def test_a_padded_sequence_scores_as_it_does_alone(cell):
    torch.manual_seed(0)
    model = HandwritingRNN(cell, 12, 6, 2).double()
    long, short = torch.randn(1, 9, 3).double(), torch.randn(1, 5, 3).double()
    long[..., 2], short[..., 2] = (long[..., 2] > 0).double(), (short[..., 2] > 0).double()
    padded = torch.cat([long, torch.cat([short, torch.zeros(1, 4, 3).double()], 1)])
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    together = model.sequence_nll(padded, mask)
    assert torch.allclose(together, torch.cat([model.sequence_nll(long), model.sequence_nll(short)]), rtol=1e-12)


# ---- IAM-OnDB ------------------------------------------------------------------------------------------
def line_xml(strokes_points: list[list[tuple[int, int]]]) -> str:
    body = "".join("<Stroke>" + "".join(f'<Point x="{x}" y="{y}" time="0"/>' for x, y in points) + "</Stroke>"
                   for points in strokes_points)
    return (f'<?xml version="1.0" encoding="ISO-8859-1"?><WhiteboardCaptureSession><StrokeSet>{body}'
            "</StrokeSet></WhiteboardCaptureSession>")


def forms(valid: bool, count: int) -> list[str]:
    found, i = [], 0
    while len(found) < count:
        name = f"z{i:02d}-000a"
        if strokes.is_valid_form(f"{name}-01") == valid:
            found.append(name)
        i += 1
    return found


def test_lines_become_scaled_offsets_with_stroke_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(strokes, "MIN_POINTS", 5)
    root = tmp_path / "iam-ondb" / "lineStrokes"
    (train_form,), (valid_form,) = forms(False, 1), forms(True, 1)
    lines = {f"{train_form}-01": [[(0, 0), (3, 4), (6, 8)], [(10, 8), (10, 2), (13, 6)]],  # 6 points, 2 strokes
             f"{valid_form}-01": [[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]],
             f"{train_form}-02": [[(0, 0), (1, 1)]]}  # 2 points: dropped as short
    for name, points in lines.items():
        folder = root / name[:3] / name[:7]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.xml").write_text(line_xml(points))
    (root / "z99" / "z99-000").mkdir(parents=True)
    (root / "z99" / "z99-000" / "z99-000a-01.xml").write_text("<WhiteboardCaptureSession><StrokeSet>")  # cut off
    ascii_dir = tmp_path / "iam-ondb" / "ascii"
    for form, text in ((train_form, "OCR:\n\nthe typed text\n\nCSR:\n\nA MOVE to stop\nMr . Gaitskell\n"),
                       (valid_form, "OCR:\n\nCSR:\n\none line\ntoo many\n")):  # 2 lines, 1 line file
        (ascii_dir / form[:3] / form[:7]).mkdir(parents=True, exist_ok=True)
        (ascii_dir / form[:3] / form[:7] / f"{form}.txt").write_bytes(text.encode("latin-1"))

    data = strokes.load_strokes(tmp_path)
    assert data.counts == {"lines": 2, "train_lines": 1, "valid_lines": 1, "points": 11, "dropped_short": 1,
                           "skipped_malformed": 1, "with_text": 1, "forms_text_mismatched": 1}
    assert data.line_texts("train") == ["A MOVE to stop"] and data.line_texts("valid") == [""]
    offsets = np.array([[0, 0], [3, 4], [3, 4], [4, 0], [0, -6], [3, 4]], dtype=float)
    assert data.scale == pytest.approx(offsets.std())  # the training lines' offsets, both axes
    [train], [valid] = data.lines("train"), data.lines("valid")
    assert np.allclose(train[:, :2] * data.scale, offsets)
    assert train[:, 2].tolist() == [0, 0, 1, 0, 0, 1] and valid[:, 2].tolist() == [0, 0, 0, 0, 1]
    assert np.allclose(valid[:, :2] * data.scale, [[0, 0]] + [[1, 1]] * 4)
    again = strokes.load_strokes(tmp_path)  # from the cache
    assert np.array_equal(again.points, data.points) and again.counts == data.counts and again.texts == data.texts


def test_a_missing_database_says_what_to_put_where(tmp_path):
    with pytest.raises(UserError, match=r"iam-ondb.*lineStrokes/.*registration"):
        strokes.load_strokes(tmp_path)


@pytest.mark.integration
def test_the_real_database(shared_data):
    """The copy in the shared data (one archive): lines of at least 300 points, every stroke ended, the
    offsets of unit spread over the training lines, a validation side of whole forms."""
    data = strokes.load_strokes(shared_data("iam-ondb"))
    assert data.counts["lines"] + data.counts["dropped_short"] + data.counts["skipped_malformed"] == 12195
    assert data.counts["train_lines"] + data.counts["valid_lines"] == data.counts["lines"] == len(data.starts) - 1
    assert np.diff(data.starts).min() >= strokes.MIN_POINTS
    assert (data.points[data.starts[1:] - 1, 2] == 1).all()  # each line ends a stroke
    train = np.concatenate(data.lines("train"))
    assert train[:, :2].std() == pytest.approx(1.0, rel=1e-4)
    assert 0.03 < data.counts["valid_lines"] / data.counts["lines"] < 0.07
    # 1,907 transcriptions; two forms' line counts differ from their line files (a08-551z, z01-000z)
    assert data.counts["forms_text_mismatched"] == 2
    assert data.counts["with_text"] == data.counts["lines"] - 16  # their 16 kept lines
    assert {name for name, text in zip(data.names, data.texts) if not text} == {
        *(f"a08-551z-{k:02d}" for k in range(1, 9)), *(f"z01-000z-{k:02d}" for k in range(1, 9))}
    named = dict(zip(data.names, data.texts))
    assert named["a01-000u-01"] == "A MOVE to stop Mr . Gaitskell"
    assert named["a01-000u-06"] == "resolution on the subject"


@pytest.mark.integration
def test_a_small_hyperlstm_learns_real_handwriting(shared_data, one_thread):
    """Forty Adam steps on eight real lines (their first 300 points): the log-loss falls by a quarter."""
    data = strokes.load_strokes(shared_data("iam-ondb"))
    batch = torch.from_numpy(np.stack([line[:300] for line in data.lines("train")[:8]]).astype(np.float32))
    torch.manual_seed(0)
    model = HandwritingRNN("hyperlstm", 32, 16, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = model.sequence_nll(batch).mean() / 299  # nats per point
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses[::10]


def test_stroke_batches_are_padded_masked_and_the_same_on_every_call():
    from hyperlab.data.stroke_batches import StrokeBatches

    rng = np.random.default_rng(0)
    lines = [np.c_[rng.normal(size=(n, 2)), (rng.random(n) < 0.1)].astype(np.float32) for n in (7, 3, 5, 9, 4)]
    evaluation = StrokeBatches(lines, batch_size=2, seed=1)
    assert len(evaluation) == 3
    points, mask = evaluation.get(0, 0)
    assert points.shape == (2, 7, 3) and mask.sum(1).tolist() == [7, 3]
    assert np.array_equal(points[1, :3].numpy(), lines[1]) and not points[1, 3:].any()  # zeros after the end

    training = StrokeBatches(lines, batch_size=2, seed=1, augment=True, max_points=4)
    seen = []
    for i in range(len(training)):
        points, mask = training.get(3, i)
        again, _ = training.get(3, i)
        assert torch.equal(points, again)  # a pure function of (seed, epoch, i)
        for row, index in enumerate(training.order(3)[i * 2:(i + 1) * 2]):
            n = min(len(lines[index]), 4)
            assert mask[row].sum() == n
            window = points[row, :n].numpy()
            source = lines[index]
            starts = [s for s in range(len(source) - n + 1) if np.array_equal(source[s:s + n, 2], window[:, 2])]
            factors = [window[:, :2] / source[s:s + n, :2] for s in starts]
            assert any(np.allclose(f, f[0]) and ((0.9 <= f[0]) & (f[0] <= 1.1)).all() for f in factors)
            seen.append(int(index))
    assert sorted(seen) == list(range(5))  # every line once an epoch
    assert not np.array_equal(training.order(3), training.order(4))


def test_generated_handwriting_is_seeded_and_the_bias_narrows_it():
    from hyperlab.models.handwriting import generate

    torch.manual_seed(0)
    model = HandwritingRNN("hyperlstm", 16, 8, 2)
    drawn, scales = generate(model, 60, seed=3, return_scales=True)
    assert drawn.shape == (60, 3) and scales.shape == (60, 4, 16)
    assert torch.equal(drawn, generate(model, 60, seed=3, return_scales=True)[0])
    plain = generate(model, 60, seed=3)  # the cell's fast path: equal to the last bit only to itself
    assert torch.equal(plain, generate(model, 60, seed=3)) and not torch.equal(plain, generate(model, 60, seed=4))
    assert set(drawn[:, 2].tolist()) <= {0.0, 1.0}
    loose, neat = generate(model, 400, seed=5), generate(model, 400, seed=5, bias=3.0)
    assert neat[:, :2].std() < 0.5 * loose[:, :2].std()  # spreads times exp(-bias), weights sharpened
    assert generate(HandwritingRNN("lstm", 8), 5, return_scales=True)[1] is None


def test_strokes_are_drawn_where_the_offsets_lead(tmp_path):
    import xml.etree.ElementTree as ET

    from hyperlab.analysis.strokes import strokes_png, strokes_svg, to_strokes

    points = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 2, 0], [1, 0, 1]], dtype=np.float32)
    first, second = to_strokes(points, scale=10)
    assert first.tolist() == [[0, 0], [10, 0], [20, 0]] and second.tolist() == [[20, 20], [30, 20]]
    svg = ET.fromstring(strokes_svg(points, scale=10, margin=10))
    paths = [p.get("d") for p in svg.iter("{http://www.w3.org/2000/svg}path")]
    assert paths == ["M10.0,10.0 L20.0,10.0 L30.0,10.0", "M30.0,30.0 L40.0,30.0"]
    assert (svg.get("width"), svg.get("height")) == ("50", "40")
    png = strokes_png(points, tmp_path / "line.png", scale=10, colour=np.arange(5.0), colour_label="|d_h - 0.1|")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
