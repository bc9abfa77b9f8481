"""The decomposed last block of a CLIP ViT: ClearCLIP's three switches.

open_clip's last block computes ``x + attn(ln_1(x))`` and then ``h + mlp(ln_2(h))``.
ClearCLIP keeps only the attention branch ``X_attn = out_proj(softmax(q q^T d^-1/2) v)``:
no residual (``x`` is dropped), no feed-forward network, and q-q instead of q-k attention.

``ATTENTION_VARIANTS`` maps each ``MODEL.CLEARCLIP.ATTENTION`` value to a function of the
per-head projections; every variant combines with ``RESIDUAL`` and ``FFN``:

- ``RESIDUAL`` toggles the skip connection of the attention sub-block (``x + X_attn``);
- ``FFN`` toggles the feed-forward sub-block with its own skip (``h + mlp(ln_2(h))``).

``qk`` with both switches on is exactly open_clip's block.
"""

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.errors import ClearCLIPError

# (q, k, v) each [B, heads, N, head_dim] -> [B, heads, N, head_dim]
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def qk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain CLIP attention ``softmax(q k^T / sqrt(d)) v``."""
    return F.scaled_dot_product_attention(q, k, v)


def qq_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ClearCLIP's self-self attention ``softmax(q q^T / sqrt(d)) v``."""
    return F.scaled_dot_product_attention(q, q, v)


ATTENTION_VARIANTS: Dict[str, AttentionFn] = {
    "qk": qk_attention,
    "qq": qq_attention,
}


def get_attention_variant(name: str) -> AttentionFn:
    """Look up an attention variant by its config name, with a clear error for unknown names."""
    if name not in ATTENTION_VARIANTS:
        raise ClearCLIPError(
            f"unknown MODEL.CLEARCLIP.ATTENTION {name!r}; valid values: {', '.join(ATTENTION_VARIANTS)}"
        )
    return ATTENTION_VARIANTS[name]


def check_decomposable_block(block: nn.Module) -> None:
    """Refuse blocks whose attention is not a standard ``nn.MultiheadAttention`` self-attention."""
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or attn.bias_k is not None:
        raise ClearCLIPError(
            f"the last ViT block ({type(block).__name__}) has no standard multi-head self-attention "
            "(open_clip models with scaled-cosine or qk-norm attention are not supported); choose another MODEL_NAME"
        )


def project_qkv(attn: nn.MultiheadAttention, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``y`` [B, N, C] into per-head q, k, v, each [B, heads, N, C / heads]."""
    batch, tokens, width = y.shape
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, width // attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def merge_heads(attn: nn.MultiheadAttention, heads: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] -> out_proj of the concatenated heads, [B, N, heads * d]."""
    batch, num_heads, tokens, head_dim = heads.shape
    merged = heads.transpose(1, 2).reshape(batch, tokens, num_heads * head_dim)
    return attn.out_proj(merged)


def decomposed_block_forward(
    block: nn.Module,
    x: torch.Tensor,
    attention: AttentionFn,
    residual: bool,
    ffn: bool,
) -> torch.Tensor:
    """Run an open_clip ``ResidualAttentionBlock`` with the chosen attention and switches.

    Args:
        block: the block (its ``ln_1``, ``attn``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2`` are used).
        x: tokens [B, N, C], batch first, class token first.
        attention: one of :data:`ATTENTION_VARIANTS`.
        residual: keep the attention sub-block's skip connection.
        ffn: apply the feed-forward sub-block (with its own skip connection).
    Returns:
        tokens [B, N, C].
    """
    q, k, v = project_qkv(block.attn, block.ln_1(x))
    x_attn = block.ls_1(merge_heads(block.attn, attention(q, k, v)))
    h = x + x_attn if residual else x_attn
    if ffn:
        h = h + block.ls_2(block.mlp(block.ln_2(h)))
    return h
