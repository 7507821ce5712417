"""Sampling text from a char model, and the weight-change activity figure of the HyperNetworks paper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

GATES = ("input", "candidate", "forget", "output")  # order (i, g, f, o) of the models' gates
GATE_COLOURS = ("Reds", "Greens", "Blues", "Purples")


@torch.no_grad()
def sample(model: torch.nn.Module, corpus, length: int, temperature: float = 1.0, primer: str = "",
           seed: int = 0) -> tuple[str, np.ndarray | None]:
    """Generate ``length`` characters after ``primer``; returns (text, activity).

    ``activity`` (length, 4), gates (i, g, f, o): for each generated character, how much the hyper
    cell changed the main LSTM's recurrent weights on the step that produced it,
    ||d_h(t) - d_h(t-1)||_2 over the last layer's units (0 for the very first step). None for
    models without a hyper cell. Sampling uses its own generator: the same seed gives the same text.
    """
    if length < 1 or temperature <= 0:
        from hyperlab.errors import UserError
        raise UserError(f"sample: length must be >= 1 and temperature > 0 (got {length}, {temperature})")
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    tokens = _primer_tokens(corpus, primer)
    state, previous, logits = None, None, None
    for token in tokens[:-1]:  # read the primer; activity counts from the last primer character on
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
    text = corpus.decode(chosen)
    return text, (torch.stack(activity).numpy() if activity else None)


def _primer_tokens(corpus, primer: str) -> list[int]:
    """The primer's ids; an empty primer starts from the end-of-line symbol (or id 0)."""
    if primer:
        return [int(t) for t in corpus.encode(primer)]
    return [int(corpus.encode("\n")[0])] if "\n" in corpus.vocab else [0]


def _step(model, token: int, state, device):
    """One character through the model: (logits (V,), state, last layer's d_h (4, H) or None)."""
    x = torch.tensor([[token]], device=device)  # (B=1, T=1)
    logits, state, scales = model(x, state, return_scales=True)
    last = scales[-1] if scales else None
    d_h = last["d_h"][0, 0] if last else None  # (T, B, 4, H) -> (4, H)
    return logits[0, -1], state, d_h


def activity_figure(text: str, activity: np.ndarray, png_path: str | Path, width: int = 60) -> Path:
    """Draw ``text`` in lines of ``width`` characters, each line over four coloured bands (input,
    candidate, forget, output) whose intensity under a character is that gate's ``activity``
    (scaled per gate to its 99th percentile). Writes a PNG and returns its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    activity = np.asarray(activity, dtype=float)
    if activity.shape != (len(text), 4):
        raise ValueError(f"activity must be (len(text), 4) = ({len(text)}, 4), got {activity.shape}")
    rows = _layout(text, width)  # [(start index, end index)] per text line
    scale = np.maximum(np.percentile(activity, 99, axis=0), 1e-12)  # (4,)
    level = np.clip(activity / scale, 0.0, 1.0)  # (N, 4)
    band, gap = 1.0, 1.6  # band height; space above the bands for the text
    fig, ax = plt.subplots(figsize=(width * 0.16 + 1.5, len(rows) * (4 * band + gap) * 0.16 + 0.8))
    for row, (start, end) in enumerate(rows):
        top = row * (4 * band + gap)
        for j, char in enumerate(text[start:end]):
            ax.text(j + 0.5, top + gap * 0.55, _visible(char), ha="center", va="center",
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
    fig.savefig(png_path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return png_path


def _layout(text: str, width: int) -> list[tuple[int, int]]:
    """Line spans: a new line after a newline character or every ``width`` characters."""
    rows, start = [], 0
    for i, char in enumerate(text):
        if char == "\n" or i - start + 1 == width:
            rows.append((start, i + 1))
            start = i + 1
    if start < len(text) or not rows:
        rows.append((start, len(text)))
    return rows


def _visible(char: str) -> str:
    return {"\n": "⏎", " ": "␣"}.get(char, char)
