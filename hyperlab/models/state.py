"""Recurrent state helpers."""

from __future__ import annotations

import torch


def detach_state(state):
    """Detach every tensor in a (nested tuple/list/dict of) recurrent state, for truncated BPTT."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    if state is None:
        return None
    raise TypeError(f"cannot detach a recurrent state of type {type(state).__name__}")
