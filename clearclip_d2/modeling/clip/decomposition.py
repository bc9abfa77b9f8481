"""The decomposed last block of a CLIP ViT: the training-free family's switches.

open_clip's last block computes ``x + attn(ln_1(x))`` and then ``h + mlp(ln_2(h))``.
ClearCLIP keeps only the attention branch ``X_attn = out_proj(softmax(q q^T d^-1/2) v)``:
no residual (``x`` is dropped), no feed-forward network, and q-q instead of q-k attention.
The other training-free segmentors change the same block in other ways, so every one of
them is a choice of three switches:

- ``ATTENTION``: how the heads mix the tokens, one of :data:`ATTENTION_VARIANTS`;
- ``RESIDUAL``: the skip connection of the attention sub-block (``x + X_attn``);
- ``FFN``: the feed-forward sub-block with its own skip (``h + mlp(ln_2(h))``).

``qk`` with both switches on is exactly open_clip's block.

Every attention variant is a function ``(q, k, v, layout) -> out`` of the per-head
projections ``q, k, v`` [B, heads, N, d] (N = prefix tokens + patches, the class token
first) returning [B, heads, N, d]; ``layout`` (:class:`TokenLayout`) gives the patch grid,
which only the neighbourhood prior of NACLIP needs. ``d^-1/2`` scales every dot product.
"""

import functools
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...constants import NACLIP_GAUSSIAN_STD
from ...checks import check_attention
from ...utils.errors import ClearCLIPError
from .attention_adapter import attention_problem, merge_heads, project_qkv


@dataclass(frozen=True)
class TokenLayout:
    """How a token sequence is laid out: ``num_prefix_tokens`` (the class token) first, then
    the ``grid_h`` x ``grid_w`` patches in row-major order."""

    grid_h: int
    grid_w: int
    num_prefix_tokens: int = 1

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.grid_h * self.grid_w


# (q, k, v each [B, heads, N, head_dim], layout) -> [B, heads, N, head_dim]
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, TokenLayout], torch.Tensor]


def qk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Plain CLIP attention ``softmax(q k^T / sqrt(d)) v``."""
    return F.scaled_dot_product_attention(q, k, v)


def qq_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """ClearCLIP's self-self attention ``softmax(q q^T / sqrt(d)) v`` (Lan et al., ECCV 2024)."""
    return F.scaled_dot_product_attention(q, q, v)


def kk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Key-key self-self attention ``softmax(k k^T / sqrt(d)) v`` (ClearCLIP's Fig. 2; the
    attention of NACLIP without its neighbourhood prior)."""
    return F.scaled_dot_product_attention(k, k, v)


def vv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Value-value self-self attention ``softmax(v v^T / sqrt(d)) v`` (as in CLIP Surgery,
    Li et al. 2023; ClearCLIP's Fig. 2)."""
    return F.scaled_dot_product_attention(v, v, v)


def qq_plus_kk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """SCLIP's correlative self-attention as the authors' code computes it (Wang et al.,
    "SCLIP: Rethinking Self-Attention for Dense Vision-Language Inference", ECCV 2024):
    ``(softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d))) v``. The two softmaxes are summed,
    so each row of weights sums to 2 (not re-normalised, as in the released code)."""
    return F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)


def identity_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """MaskCLIP (Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022): every token
    attends only to itself, so the output is the value embedding ``v``."""
    return v


def neighbourhood_prior(layout: TokenLayout, std: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """NACLIP's Gaussian neighbourhood prior, [N, N] with N = ``layout.num_tokens``.

    Between patches at grid positions (i, j) and (k, l) it is
    ``exp(-((i - k)^2 + (j - l)^2) / (2 std^2))`` (1 on the diagonal, ``std`` in patches), over
    the whole grid: the authors' window of (2h - 1) x (2w - 1) patches always covers it. Rows
    and columns of the prefix (class) token are 0: the class token gets no prior and adds
    none, as in the authors' code.
    """
    rows = torch.arange(layout.grid_h, device=device, dtype=torch.float32)
    cols = torch.arange(layout.grid_w, device=device, dtype=torch.float32)
    coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    squared_distance = (coords[:, None, :] - coords[None, :, :]).pow(2).sum(-1)
    prior = torch.exp(-squared_distance / (2.0 * std * std))
    return F.pad(prior, (layout.num_prefix_tokens, 0, layout.num_prefix_tokens, 0)).to(dtype)


def naclip_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, std: float = NACLIP_GAUSSIAN_STD
) -> torch.Tensor:
    """NACLIP's neighbour-aware attention (Hajimiri et al., "Pay Attention to Your Neighbours:
    Training-Free Open-Vocabulary Semantic Segmentation", WACV 2025):
    ``softmax(k k^T / sqrt(d) + G) v`` with G the :func:`neighbourhood_prior` added to the
    logits unscaled. NACLIP also drops the residual and the FFN of the last block (set
    ``RESIDUAL False``, ``FFN False``)."""
    if q.shape[-2] != layout.num_tokens:
        raise ClearCLIPError(f"naclip attention: {q.shape[-2]} tokens do not fit a {layout} grid")
    prior = neighbourhood_prior(layout, std, device=k.device, dtype=k.dtype)
    return F.scaled_dot_product_attention(k, k, v, attn_mask=prior)


ATTENTION_VARIANTS: Dict[str, AttentionFn] = {
    "qk": qk_attention,
    "qq": qq_attention,
    "kk": kk_attention,
    "vv": vv_attention,
    "qq+kk": qq_plus_kk_attention,
    "identity": identity_attention,
    "naclip": naclip_attention,
}


def get_attention_variant(name: str, naclip_std: Optional[float] = None) -> AttentionFn:
    """Look up an attention variant by its config name, with a clear error for unknown names.

    ``naclip_std`` (patches, > 0) sets the width of NACLIP's prior; default
    :data:`~clearclip_d2.constants.NACLIP_GAUSSIAN_STD`.
    """
    check_attention(name, naclip_std)
    if name == "naclip" and naclip_std is not None:
        return functools.partial(naclip_attention, std=float(naclip_std))
    return ATTENTION_VARIANTS[name]


def decomposition_problem(block: nn.Module) -> Optional[str]:
    """Why ``block`` cannot be split into :func:`attention_branch` and
    :func:`feed_forward_branch`; None if it can (its attention is a plain multi-head
    self-attention, read by :mod:`.attention_adapter`)."""
    attn = getattr(block, "attn", None)
    if attn is None:
        return "it has no attention module 'attn'"
    if not isinstance(getattr(block, "ln_attn", nn.Identity()), nn.Identity):
        return "it normalises the attention's output (scale_attn)"
    return attention_problem(attn)


def check_decomposable_block(block: nn.Module) -> None:
    """Refuse blocks whose attention is not a plain multi-head self-attention, saying why."""
    problem = decomposition_problem(block)
    if problem:
        raise ClearCLIPError(
            f"the ViT block {type(block).__name__} cannot be decomposed: {problem}; choose another MODEL_NAME"
        )


def is_standard_block(block: nn.Module) -> bool:
    """True for open_clip's plain ``ResidualAttentionBlock`` with a plain self-attention,
    whose ``forward`` equals ``decomposed_block_forward(block, x, qk_attention, True, True, ...)``."""
    from open_clip.transformer import ResidualAttentionBlock

    return type(block) is ResidualAttentionBlock and decomposition_problem(block) is None and not hasattr(block, "ln_1_kv")


def attention_branch(block: nn.Module, x: torch.Tensor, attention: AttentionFn, layout: TokenLayout) -> torch.Tensor:
    """The paper's ``X_attn`` of a block: ``ls_1(out_proj(attention(q, k, v)))`` of ``ln_1(x)``.

    Args:
        x: the block's input tokens [B, N, C] (batch first, class token first); this is ``X_res``.
    Returns:
        [B, N, C].
    """
    q, k, v = project_qkv(block.attn, block.ln_1(x))
    return block.ls_1(merge_heads(block.attn, attention(q, k, v, layout)))


def feed_forward_branch(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The feed-forward sub-block's output ``ls_2(mlp(ln_2(h)))`` [B, N, C] (added to ``h``)."""
    return block.ls_2(block.mlp(block.ln_2(h)))


def decomposed_block_forward(
    block: nn.Module,
    x: torch.Tensor,
    attention: AttentionFn,
    residual: bool,
    ffn: bool,
    layout: TokenLayout,
) -> torch.Tensor:
    """Run an open_clip ``ResidualAttentionBlock`` with the chosen attention and switches.

    Args:
        block: the block (its ``ln_1``, ``attn``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2`` are used).
        x: tokens [B, N, C], batch first, class token first.
        attention: one of :data:`ATTENTION_VARIANTS`.
        residual: keep the attention sub-block's skip connection.
        ffn: apply the feed-forward sub-block (with its own skip connection).
        layout: the token layout of ``x`` (patch grid).
    Returns:
        tokens [B, N, C].
    """
    x_attn = attention_branch(block, x, attention, layout)
    h = x + x_attn if residual else x_attn
    if ffn:
        h = h + feed_forward_branch(block, h)
    return h
