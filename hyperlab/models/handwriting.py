"""Handwriting generation after Graves (2013), section 4.2: pen offsets -> recurrent stack -> a mixture
density output (PAPER.md section 3, IAM-OnDB).

Each step reads a point ``(dx, dy, end_of_stroke)`` and predicts the next one as a mixture of
``N_MIXTURES`` bivariate Gaussians over ``(dx, dy)`` and a Bernoulli over the end of stroke: 6 numbers per
component (weight, two means, two standard deviations, correlation) and one, 121 outputs for 20. Parameter
counts equal the paper's (hidden 900, hyper 128, n_z 4): LSTM 3.36M, LN-LSTM 3.37M, HyperLSTM 3.94M,
LN HyperLSTM 3.95M.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import pydantic
import torch
import torch.nn.functional as F
from torch import nn

from hyperlab.models.char_rnn import RecurrentConfig, recurrent_stack, zero_state
from hyperlab.models.config import DataShape
from hyperlab.models.hyperlstm import HyperLSTM

N_MIXTURES = 20
POINT_SIZE = 3  # (dx, dy, end_of_stroke)
MAX_CORRELATION = 1.0 - 1e-5  # |rho| below 1: the Gaussian's determinant stays positive
MIN_LOG_STD = -7.0             # standard deviations above 1e-3 of the offsets' scale
LOG_2PI = math.log(2.0 * math.pi)


class Mixture(nn.Module):
    """Linear map of the recurrent output to a mixture's parameters; ``nll`` and ``sample`` read them.

    ``params = mixture(h)``: h (..., H) -> dict of ``log_weight`` (..., M) (log-softmax), ``mean`` (..., M, 2),
    ``log_std`` (..., M, 2) (clamped below at ``MIN_LOG_STD``), ``rho`` (..., M) (tanh, within
    ``MAX_CORRELATION``) and ``eos_logit`` (...,) (the end of stroke's probability is its sigmoid).
    """

    def __init__(self, hidden_size: int, n_mixtures: int = N_MIXTURES):
        super().__init__()
        self.n_mixtures = n_mixtures
        self.linear = nn.Linear(hidden_size, 6 * n_mixtures + 1)  # (H + 1) * 121 for 20 components

    def forward(self, h: torch.Tensor, bias: float = 0.0) -> dict[str, torch.Tensor]:
        """``bias`` (Graves' sampling bias, 0 for training) sharpens the weights and narrows the spreads."""
        out = self.linear(h)
        m = self.n_mixtures
        weight, mean, log_std, rho, eos = out.split([m, 2 * m, 2 * m, m, 1], dim=-1)
        return {"log_weight": F.log_softmax(weight * (1.0 + bias), dim=-1),
                "mean": mean.unflatten(-1, (m, 2)),
                "log_std": (log_std.unflatten(-1, (m, 2)) - bias).clamp(min=MIN_LOG_STD),
                "rho": torch.tanh(rho).clamp(-MAX_CORRELATION, MAX_CORRELATION),
                "eos_logit": eos.squeeze(-1)}


def point_log_likelihood(params: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """log p(target) per step, in nats: target (..., 3) -> (...). The mixture's terms are combined with
    log-sum-exp; the Bernoulli's with ``logsigmoid`` (no log of a probability that underflows)."""
    offset = target[..., None, :2] - params["mean"]                  # (..., M, 2)
    z = offset * torch.exp(-params["log_std"])                       # standardised offsets
    rho = params["rho"]
    one_minus = 1.0 - rho * rho
    quadratic = (z[..., 0] ** 2 + z[..., 1] ** 2 - 2.0 * rho * z[..., 0] * z[..., 1]) / one_minus
    log_gauss = -LOG_2PI - params["log_std"].sum(-1) - 0.5 * torch.log(one_minus) - 0.5 * quadratic  # (..., M)
    log_mixture = torch.logsumexp(params["log_weight"] + log_gauss, dim=-1)
    eos = target[..., 2]
    log_eos = eos * F.logsigmoid(params["eos_logit"]) + (1.0 - eos) * F.logsigmoid(-params["eos_logit"])
    return log_mixture + log_eos


def sample_point(params: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """One point per row from the mixture: params of shape (B, ...) -> (B, 3)."""
    weights = params["log_weight"].exp()
    k = torch.multinomial(weights, 1, generator=generator).squeeze(-1)  # (B,) chosen component
    rows = torch.arange(len(k), device=k.device)
    mean, std, rho = params["mean"][rows, k], params["log_std"][rows, k].exp(), params["rho"][rows, k]
    e1, e2 = torch.randn(2, len(k), device=k.device, generator=generator)
    dx = mean[:, 0] + std[:, 0] * e1
    dy = mean[:, 1] + std[:, 1] * (rho * e1 + torch.sqrt(1.0 - rho * rho) * e2)  # correlated by rho
    eos = torch.bernoulli(torch.sigmoid(params["eos_logit"]), generator=generator)
    return torch.stack([dx, dy, eos], dim=-1)


class HandwritingRNN(nn.Module):
    """``params, state = model(points, state=None)``: points (B, T, 3) -> the mixture's parameters for the
    next point at every step (each (B, T, ...), see ``Mixture``). ``return_scales=True`` adds the hyper
    cells' scaling vectors (an empty list for cells without a hypernetwork)."""

    def __init__(self, cell: str, hidden_size: int, hyper_size: int = 128, n_z: int = 4, num_layers: int = 1,
                 dropout: float = 0.0, n_mixtures: int = N_MIXTURES, impl: str = "auto"):
        super().__init__()
        self.cell = cell
        self.rnn = recurrent_stack(cell, POINT_SIZE, hidden_size, hyper_size, n_z, num_layers, dropout, impl)
        self.mixture = Mixture(hidden_size, n_mixtures)

    @property
    def is_hyper(self) -> bool:
        return isinstance(self.rnn, HyperLSTM)

    def init_state(self, batch_size: int, device=None):
        return zero_state(self.rnn, batch_size, device)

    def forward(self, points: torch.Tensor, state=None, return_scales: bool = False, bias: float = 0.0):
        if points.dim() != 3 or points.shape[-1] != POINT_SIZE:
            raise ValueError(f"expected points of shape (B, T, {POINT_SIZE}), got {tuple(points.shape)}")
        x = points.transpose(0, 1)                                     # (T, B, 3)
        scales = []
        if self.is_hyper and return_scales:
            out, state, scales = self.rnn(x, state, return_scales=True)
        else:
            out, state = self.rnn(x, state)
        params = self.mixture(out.transpose(0, 1), bias)               # each (B, T, ...)
        return (params, state, scales) if return_scales else (params, state)

    def sequence_nll(self, points: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The paper's log-loss of each sequence: -log p of points 1..T given the ones before, summed over
        the sequence, in nats; points (B, T, 3), ``mask`` (B, T) marks real points (padding after) -> (B,)."""
        params, _ = self(points[:, :-1])
        log_p = point_log_likelihood(params, points[:, 1:])          # (B, T-1)
        if mask is not None:
            log_p = log_p * mask[:, 1:].to(log_p.dtype)
        return -log_p.sum(dim=1)


class HandwritingRNNConfig(RecurrentConfig):
    """``model:`` of a handwriting model (``task: handwriting``)."""

    name: Literal["handwriting_rnn"] = "handwriting_rnn"
    task: ClassVar[str] = "handwriting"
    n_mixtures: pydantic.PositiveInt = N_MIXTURES

    def build(self, data: DataShape) -> HandwritingRNN:
        return HandwritingRNN(self.cell, self.hidden_size, self.hyper_size, self.n_z, self.num_layers,
                              self.dropout, self.n_mixtures)


@torch.no_grad()
def generate(model: HandwritingRNN, n_points: int, bias: float = 0.0, seed: int = 0,
             return_scales: bool = False):
    """Unconditional handwriting: ``n_points`` points (n_points, 3) drawn one at a time from the model,
    each fed back as the next input, from a pen at rest (0, 0, 0). ``bias`` is Graves' sampling bias (0:
    the model's own distribution; larger: neater, less varied writing). ``return_scales=True`` adds the
    hyper cell's ``d_h`` of the first layer at every step, (n_points, 4, H) (gates i, g, f, o), or None."""
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    point = torch.zeros(1, 1, POINT_SIZE, device=device)
    state, points, scales = None, [], []
    for _ in range(n_points):
        if return_scales and model.is_hyper:
            params, state, layer_scales = model(point, state, return_scales=True, bias=bias)
            scales.append(layer_scales[0]["d_h"][0, 0])                # (4, H)
        else:
            params, state = model(point, state, bias=bias)
        step = {k: v[:, -1].cpu() for k, v in params.items()}
        point = sample_point(step, generator).to(device)[:, None]     # (1, 1, 3)
        points.append(point[0, 0].cpu())
    model.train(was_training)
    drawn = torch.stack(points)
    if return_scales:
        return drawn, (torch.stack(scales).cpu() if scales else None)
    return drawn
