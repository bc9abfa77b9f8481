"""One view of a ViT block's self-attention, whichever module open_clip builds it with.

open_clip 3.x builds its ViT blocks with ``torch.nn.MultiheadAttention``; its next major
version with its own ``open_clip.transformer.Attention``. Both keep the weights under the
same names: ``in_proj_weight`` [3C, C] with q, k and v packed, or, when that is ``None``,
``q_proj_weight``, ``k_proj_weight`` and ``v_proj_weight`` [C, C]; ``in_proj_bias`` [3C] or
``None``; ``out_proj`` (``nn.Linear``) and ``num_heads``. This module reads them from either,
refuses (one line naming the reason) the attentions whose math is not
``out_proj(softmax(q k^T / sqrt(d)) v)``, and says which token layout a block takes.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import Attention as OpenCLIPAttention
from torch import nn

# (weight [C, C], bias [C] or None) of one of q, k, v
Projection = Tuple[torch.Tensor, Optional[torch.Tensor]]


def attention_problem(attn: nn.Module) -> Optional[str]:
    """Why ``attn`` is not a plain multi-head self-attention of its input; None if it is."""
    if isinstance(attn, nn.MultiheadAttention):
        if attn.bias_k is not None or attn.add_zero_attn:
            return "its attention adds extra key/value biases (add_bias_kv / add_zero_attn)"
    elif isinstance(attn, OpenCLIPAttention):
        if getattr(attn, "logit_scale", None) is not None:
            return "its attention is scaled-cosine attention"
        if not all(isinstance(getattr(attn, name, nn.Identity()), nn.Identity) for name in ("ln_q", "ln_k")):
            return "its attention normalises q and k (qk-norm)"
        if getattr(attn, "head_scale", None) is not None or not isinstance(getattr(attn, "ln_inner", nn.Identity()), nn.Identity):
            return "its attention rescales or normalises the heads (scale_heads / inner_norm)"
    else:
        return f"its attention {type(attn).__name__} is neither torch's MultiheadAttention nor open_clip's Attention"
    width = attn.out_proj.in_features
    if any(weight.shape != (width, width) for weight, _ in qkv_projections(attn)):
        return "its keys or values have another width than its queries (cross-attention)"
    return None


def qkv_projections(attn: nn.Module) -> Tuple[Projection, Projection, Projection]:
    """The (weight, bias) of q, k and v, whether packed in ``in_proj_weight`` or separate."""
    if attn.in_proj_weight is not None:
        weights = attn.in_proj_weight.chunk(3)
    else:
        weights = (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight)
    biases = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    return tuple(zip(weights, biases))


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, heads, N, C / heads]."""
    batch, tokens, width = x.shape
    return x.reshape(batch, tokens, num_heads, width // num_heads).transpose(1, 2)


def project_qkv(attn: nn.Module, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``y`` [B, N, C] into per-head q, k, v, each [B, heads, N, C / heads]."""
    if attn.in_proj_weight is not None:  # one matrix product for the three
        batch, tokens, width = y.shape
        qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
        qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, width // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v
    q, k, v = (split_heads(F.linear(y, weight, bias), attn.num_heads) for weight, bias in qkv_projections(attn))
    return q, k, v


def merge_heads(attn: nn.Module, heads: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] -> ``out_proj`` of the concatenated heads, [B, N, heads * d]."""
    batch, num_heads, tokens, head_dim = heads.shape
    merged = heads.transpose(1, 2).reshape(batch, tokens, num_heads * head_dim)
    return attn.out_proj(merged)


def takes_batch_first(attn: nn.Module) -> bool:
    """Whether a block with this attention takes tokens [B, N, C] (True) or [N, B, C]:
    ``nn.MultiheadAttention`` says so in ``batch_first``; open_clip's ``Attention`` (and any
    other block open_clip builds) always takes batch first."""
    return attn.batch_first if isinstance(attn, nn.MultiheadAttention) else True
