"""How far does one SGD step on one layer alone move a model's logits? (docs/design.md §3.2)

For each layer with weights of its own (convs, linears, WN-family layers with a direction ``v``), from the
same starting state: one SGD step at ``lr`` on that layer's parameters only, on the batch ``(x, y)``, then
‖logits_after − logits_before‖ / ‖logits_before‖ on the same batch. A layer whose reparameterization
amplifies SGD's steps (WN's classifier under data-dependent init: (g/‖v‖)² ≫ 1) stands out by an order
of magnitude. The model is left in its starting state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def one_step_logit_moves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, float]:
    """Layer name -> relative logit move of one SGD step on that layer alone."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits0 = model(x)
    moves: dict[str, float] = {}
    try:
        for name, layer in model.named_modules():
            own = list(layer.parameters(recurse=False))
            if not own or not (hasattr(layer, "v") or isinstance(layer, nn.Conv2d | nn.Linear)):
                continue
            model.load_state_dict(state)
            opt = torch.optim.SGD(own, lr=lr)
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                moves[name] = ((model(x) - logits0).norm() / logits0.norm()).item()
    finally:
        model.load_state_dict(state)
        model.zero_grad()
    return moves
