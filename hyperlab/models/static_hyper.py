"""Static hypernetwork (PAPER.md section 2): one kernel generator shared by every generated conv layer.

A basic tile kernel (16 out × 16 in × f × f) is generated from one embedding z (N_z) by a two-layer
linear generator: a_i = W_i z + B_i (i = 1..N_in, each d × N_z, d = N_z), K_i = W_out a_i + B_out.
Larger kernels are tiled from basic kernels, one z per tile. No nonlinearity on the generated kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TILE = 16  # the paper's basic kernel: 16 in × 16 out channels


class KernelGenerator(nn.Module):
    """Maps embeddings z (..., N_z) to conv kernels (..., out_tile, in_tile, f, f).

    Parameters: d(N_z + 1)·in_tile + f·out_tile·f·(d + 1), with d = N_z unless given.
    """

    def __init__(self, n_z: int, kernel_size: int, in_tile: int = TILE, out_tile: int = TILE,
                 hidden: int | None = None):
        super().__init__()
        self.n_z, self.kernel_size, self.in_tile, self.out_tile = n_z, kernel_size, in_tile, out_tile
        self.hidden = hidden or n_z
        f, d = kernel_size, self.hidden
        self.weight_in = nn.Parameter(torch.empty(in_tile, d, n_z))      # W_i, one per input channel
        self.bias_in = nn.Parameter(torch.zeros(in_tile, d))             # B_i
        self.weight_out = nn.Parameter(torch.empty(out_tile * f * f, d))  # W_out
        self.bias_out = nn.Parameter(torch.zeros(out_tile * f * f))      # B_out
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """a_i has unit variance for unit-variance z; the kernel then has He-like variance 2/(in_tile·f²)."""
        if self.weight_in.is_meta:  # size_model: nothing to fill (and random ops on meta are slow)
            return
        fan_in = self.in_tile * self.kernel_size ** 2
        with torch.no_grad():
            self.weight_in.normal_(0.0, 1.0 / math.sqrt(self.n_z))
            self.bias_in.zero_()
            self.weight_out.normal_(0.0, math.sqrt(2.0 / fan_in / self.hidden))
            self.bias_out.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        f = self.kernel_size
        a = torch.einsum("idk,...k->...id", self.weight_in, z) + self.bias_in  # (..., in_tile, d)
        k = F.linear(a, self.weight_out, self.bias_out)  # (..., in_tile, out_tile·f·f)
        k = k.unflatten(-1, (self.out_tile, f, f))       # (..., in_tile, out_tile, f, f)
        return k.transpose(-4, -3)                        # (..., out_tile, in_tile, f, f)


class GeneratedConv2d(nn.Module):
    """A conv layer whose kernel (out, in, f, f) is tiled from the shared generator, one z per tile.

    Its own parameters are the embeddings only: (out/16)·(in/16) of size N_z. The generator is the same
    object in every layer (``model.parameters()`` counts it once).
    """

    def __init__(self, generator: KernelGenerator, in_channels: int, out_channels: int,
                 stride: int = 1, padding: int | None = None, bias: bool = False):
        super().__init__()
        g = generator
        if in_channels % g.in_tile or out_channels % g.out_tile:
            raise ValueError(f"channels {out_channels}x{in_channels} are not a multiple of the "
                             f"{g.out_tile}x{g.in_tile} tile")
        self.generator = generator
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.padding = g.kernel_size // 2 if padding is None else padding
        self.z = nn.Parameter(torch.empty(out_channels // g.out_tile, in_channels // g.in_tile, g.n_z))
        if not self.z.is_meta:
            nn.init.normal_(self.z)  # unit variance: the generator's init assumes it
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @property
    def n_generated(self) -> int:
        """Parameters an ordinary kernel of this shape would have."""
        return self.in_channels * self.out_channels * self.generator.kernel_size ** 2

    def kernel(self) -> torch.Tensor:
        """The generated kernel (out, in, f, f): tile (r, s) is the generator applied to z[r, s]."""
        tiles = self.generator(self.z)  # (R, S, out_tile, in_tile, f, f)
        r, s, o, i, f, _ = tiles.shape
        return tiles.permute(0, 2, 1, 3, 4, 5).reshape(r * o, s * i, f, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel(), self.bias, self.stride, self.padding)
