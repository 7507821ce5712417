"""Parameter reports: totals, the hypernetwork's share and the compression ratio of generated layers."""

from __future__ import annotations

from torch import nn

from hyperlab.models.hyperlstm import HyperLSTMCell
from hyperlab.models.static_hyper import GeneratedConv2d


def _count(params) -> int:
    unique = {id(p): p for p in params if p.requires_grad}  # shared parameters count once
    return sum(p.numel() for p in unique.values())


def _hyper_cell_params(cell: HyperLSTMCell) -> list[nn.Parameter]:
    return [*cell.hyper.parameters(), cell.weight_z, cell.bias_z, cell.weight_scale]


def parameter_report(model: nn.Module) -> dict:
    """Trainable parameter counts of ``model``.

    Keys: ``total``; ``generator`` (the hypernetwork: the shared kernel generator, or the hyper cells
    with their embedding and scaling projections); ``embeddings`` (the static z's); ``ordinary`` (the
    rest); ``generated_layers_with_hyper`` (generator + embeddings) and ``generated_layers_without_hyper``
    (what the generated kernels would cost as ordinary parameters); ``compression_ratio`` = with / without
    for static hypernetworks, None otherwise.
    """
    generated = [m for m in model.modules() if isinstance(m, GeneratedConv2d)]
    hyper_cells = [m for m in model.modules() if isinstance(m, HyperLSTMCell)]
    generator_params = [p for m in generated for p in m.generator.parameters()]
    generator_params += [p for cell in hyper_cells for p in _hyper_cell_params(cell)]
    total, generator = _count(model.parameters()), _count(generator_params)
    embeddings = _count(m.z for m in generated)
    without = sum(m.n_generated for m in generated)
    return {
        "total": total,
        "generator": generator,
        "embeddings": embeddings,
        "ordinary": total - generator - embeddings,
        "generated_layers_with_hyper": generator + embeddings if generated else 0,
        "generated_layers_without_hyper": without,
        "compression_ratio": (generator + embeddings) / without if generated else None,
    }
