"""Contrastive losses with negatives from the whole global batch.

Each rank holds a local slice of the global batch; it scores its own images (texts) against every text
(image) of the global batch, gathered with a differentiable all-gather. Averaging the ranks' losses
gives exactly the full-batch loss (tests compare against a direct full-batch computation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its temperature at 100 (on the parameter, after the step)


def infonce_loss(
    image_local: torch.Tensor,
    text_local: torch.Tensor,
    image_all: torch.Tensor,
    text_all: torch.Tensor,
    offset: int,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """CLIP's symmetric softmax cross-entropy; the positives of local row i sit at column offset + i. The
    temperature is clamped on the parameter after each step (the task's `after_optimizer_step`), not here,
    where a clamp would zero its gradient."""
    scale = logit_scale.exp()
    labels = torch.arange(image_local.shape[0], device=image_local.device) + offset
    image_to_text = scale * image_local @ text_all.t()
    text_to_image = scale * text_local @ image_all.t()
    return (F.cross_entropy(image_to_text, labels) + F.cross_entropy(text_to_image, labels)) / 2


def sigmoid_loss(
    image_local: torch.Tensor,
    text_all: torch.Tensor,
    offset: int,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss: -1/|B| sum_ij log sigmoid(z_ij (t x_i.y_j + b)), z = +1 on pairs."""
    logits = logit_scale.exp() * image_local @ text_all.t() + logit_bias
    signs = -torch.ones_like(logits)
    rows = torch.arange(image_local.shape[0], device=image_local.device)
    signs[rows, rows + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / image_local.shape[0]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' tensors concatenated in rank order, with gradients flowing back to their owners."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)  # type: ignore[no-untyped-call]
