"""Sampling text from a char model, and the weight-change activity figure of the HyperNetworks paper."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

GATES = ("input", "candidate", "forget", "output")  # order (i, g, f, o) of the models' gates
GATE_COLOURS = ("Reds", "Greens", "Blues", "Purples")
REPLACEMENT = "\ufffd"  # shown for <unk> and for bytes that are part of no UTF-8 sequence
CONTINUATION = ""  # shown under the later bytes of a multi-byte character (the character sits on the first)


class Sample(NamedTuple):
    """What ``sample`` generated: ``text`` (decoded; a byte-level corpus reads its bytes as UTF-8),
    ``tokens`` (one printable string per generated token, see ``token_strings``) and ``activity``
    ((len(tokens), 4) or None)."""

    text: str
    tokens: list[str]
    activity: np.ndarray | None


@torch.no_grad()
def sample(model: torch.nn.Module, corpus, length: int, temperature: float = 1.0, primer: str = "",
           seed: int = 0) -> Sample:
    """Generate ``length`` tokens (characters, or bytes for a byte-level corpus) after ``primer``.

    ``activity`` (length, 4), gates (i, g, f, o): for each generated token, how much the hyper
    cell changed the main LSTM's recurrent weights on the step that produced it,
    ||d_h(t) - d_h(t-1)||_2 over the last layer's units (0 for the very first step). None for
    models without a hyper cell. Sampling uses its own generator: the same seed gives the same text.
    """
    if length < 1 or not 0 < temperature < float("inf"):
        from hyperlab.errors import UserError
        raise UserError(f"sample: length must be >= 1 and temperature > 0 (got {length}, {temperature})")
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    tokens = _primer_tokens(corpus, primer)
    state, previous, logits = None, None, None
    for token in tokens[:-1]:  # read the primer; activity counts from the last primer token on
        logits, state, previous = _step(model, token, state, device)
    chosen, activity, token = [], [], tokens[-1]
    for _ in range(length):
        logits, state, d_h = _step(model, token, state, device)
        if d_h is not None:
            change = torch.zeros(4) if previous is None else (d_h - previous).norm(dim=-1).cpu()  # (4,)
            activity.append(change)
            previous = d_h
        probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)  # (V,)
        token = int(torch.multinomial(probs, 1, generator=generator))
        chosen.append(token)
    model.train(was_training)
    return Sample(corpus.decode(chosen), token_strings(corpus, chosen),
                  torch.stack(activity).numpy() if activity else None)


def token_strings(corpus, ids: list[int]) -> list[str]:
    """One printable string per token id: its character, or for a byte-level corpus the character
    a UTF-8 sequence decodes to on the sequence's first byte and ``CONTINUATION`` on its other bytes;
    a byte that is part of no valid sequence (and ``<unk>``) shows as U+FFFD."""
    if corpus.kind != "bytes":
        return [REPLACEMENT if i == corpus.unk_id else corpus.vocab[i] for i in ids]
    values = [None if i == corpus.unk_id else ord(corpus.vocab[i]) for i in ids]  # byte values
    strings, start = [], 0
    while start < len(values):
        width = _utf8_width(values[start])
        piece = values[start:start + width]
        try:
            char = bytes(piece).decode("utf-8") if None not in piece and len(piece) == width else None
        except UnicodeDecodeError:
            char = None
        if char is None:  # invalid or cut short: this byte alone, the next one starts afresh
            strings.append(REPLACEMENT)
            start += 1
        else:
            strings += [char] + [CONTINUATION] * (width - 1)
            start += width
    return strings


def _utf8_width(lead: int | None) -> int:
    """Bytes in the UTF-8 sequence a lead byte starts (1 for ASCII and for invalid leads)."""
    if lead is None or lead < 0xC2 or lead > 0xF4:
        return 1
    return 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _primer_tokens(corpus, primer: str) -> list[int]:
    """The primer's ids; an empty primer starts from the end-of-line symbol (or id 0)."""
    if primer:
        return [int(t) for t in corpus.encode(primer)]
    return [int(corpus.encode("\n")[0])] if "\n" in corpus.vocab else [0]


def _step(model, token: int, state, device):
    """One token through the model: (logits (V,), state, last layer's d_h (4, H) or None)."""
    x = torch.tensor([[token]], device=device)  # (B=1, T=1)
    logits, state, scales = model(x, state, return_scales=True)
    last = scales[-1] if scales else None
    d_h = last["d_h"][0, 0] if last else None  # (T, B, 4, H) -> (4, H)
    return logits[0, -1], state, d_h


def activity_figure(tokens: Sequence[str], activity: np.ndarray, png_path: str | Path, width: int = 60) -> Path:
    """Draw the generated ``tokens`` (``Sample.tokens``; a string of characters also works) in lines
    of ``width`` tokens, each line over four coloured bands (input, candidate, forget, output) whose
    intensity under a token is that gate's ``activity`` (scaled per gate to its 99th percentile).
    Writes a PNG and returns its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    activity = np.asarray(activity, dtype=float)
    if activity.shape != (len(tokens), 4):
        raise ValueError(f"activity must be (len(tokens), 4) = ({len(tokens)}, 4), got {activity.shape}")
    rows = _layout(tokens, width)  # [(start index, end index)] per text line
    scale = np.maximum(np.percentile(activity, 99, axis=0), 1e-12)  # (4,)
    level = np.clip(activity / scale, 0.0, 1.0)  # (N, 4)
    band, gap = 1.0, 1.6  # band height; space above the bands for the text
    fig, ax = plt.subplots(figsize=(width * 0.16 + 1.5, len(rows) * (4 * band + gap) * 0.16 + 0.8))
    for row, (start, end) in enumerate(rows):
        top = row * (4 * band + gap)
        for j, token in enumerate(tokens[start:end]):
            ax.text(j + 0.5, top + gap * 0.55, _visible(token), ha="center", va="center",
                    family="monospace", fontsize=7)
        for gate, colours in enumerate(GATE_COLOURS):
            colour = plt.get_cmap(colours)(0.15 + 0.85 * level[start:end, gate])  # (n, 4) RGBA
            ax.imshow(colour[None], extent=(0, end - start, top + gap + (gate + 1) * band,
                                            top + gap + gate * band), interpolation="nearest")
    ax.set_xlim(0, width)
    ax.set_ylim(len(rows) * (4 * band + gap), 0)
    ax.set_aspect("auto")
    ax.axis("off")
    ax.set_title("weight-change activity per gate: " + ", ".join(
        f"{g} ({c.lower().rstrip('s')})" for g, c in zip(GATES, GATE_COLOURS)), fontsize=8)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # a character the monospace font lacks is drawn as a box: no warning each
        warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from font", UserWarning)
        fig.savefig(png_path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return png_path


def _layout(tokens: Sequence[str], width: int) -> list[tuple[int, int]]:
    """Line spans: a new line after a newline token or every ``width`` tokens."""
    rows, start = [], 0
    for i, token in enumerate(tokens):
        if token == "\n" or i - start + 1 == width:
            rows.append((start, i + 1))
            start = i + 1
    if start < len(tokens) or not rows:
        rows.append((start, len(tokens)))
    return rows


def _visible(token: str) -> str:
    if token.isprintable() or token == CONTINUATION:
        return {" ": "␣"}.get(token, token)
    return {"\n": "⏎", "\t": "⇥"}.get(token, REPLACEMENT)  # other control characters
