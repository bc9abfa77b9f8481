"""Dense patch features from an open_clip ViT whose last block is decomposed.

The first L-1 blocks compute exactly open_clip's blocks; the last block runs through
:func:`decomposed_block_forward`, once (the authors' code runs the full last block and then
the decomposed one: ``clearclip_d2.engine.benchmark.reference_style_encode`` does that for
speed comparisons); then ``ln_post`` and the visual projection are applied to every patch token
and the class token is dropped.

Fused attention: the standard blocks, whichever attention module open_clip builds them with
(:mod:`.attention_adapter` reads the weights of ``nn.MultiheadAttention`` and of open_clip's
own ``Attention``), are run here as ``x + attn(ln_1(x))`` and ``h + mlp(ln_2(h))`` with the
attention from ``F.scaled_dot_product_attention`` (:func:`~.decomposition.qk_attention`), the
same function of the same weights (tests: within 1e-5 of open_clip's block), so that every
device gets a fused kernel (``nn.MultiheadAttention``'s inference path writes out the full
[N, N] attention matrix on the CPU; docs/PERFORMANCE.md#fast-path-and-reference-style). Any
other block type runs through its own ``forward``.

Towers with ``final_ln_after_pool`` (e.g. the CLIPA models) apply ``ln_post`` to the pooled
embedding instead of to the tokens. The dense feature of a patch is taken to be the pooled
embedding of that patch alone, ``ln_post(x_i) @ proj`` (pooling one token is the identity;
for class-token pooling ``ln_post`` of the pooled token equals the pooled ``ln_post`` of the
tokens, since LayerNorm acts per token), so ``ln_post`` is applied to every patch token in
all towers. The ClearCLIP authors' fork instead leaves such tokens without ``ln_post``.
"""

from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...constants import POS_EMBED_INTERP_OFFSET
from ...utils.errors import ClearCLIPError
from .attention_adapter import takes_batch_first
from .decomposition import (
    TokenLayout,
    check_decomposable_block,
    decomposed_block_forward,
    get_attention_variant,
    is_standard_block,
    qk_attention,
)


class DenseCLIPEncoder(nn.Module):
    """Wraps ``open_clip``'s ``VisionTransformer`` to return per-patch embeddings.

    Input: images [B, 3, H, W], normalised, H and W multiples of the patch size (other sizes
    are truncated by the patch embedding, as in open_clip). Output: [B, H/p * W/p, D] in the
    joint image-text space (not L2-normalised), patches in row-major order.
    """

    def __init__(
        self,
        visual: nn.Module,
        attention: str = "qq",
        residual: bool = False,
        ffn: bool = False,
        naclip_std: Optional[float] = None,
    ):
        super().__init__()
        check_vision_tower(visual)
        self.visual = visual
        self.attention_name = attention
        self.attention = get_attention_variant(attention, naclip_std)
        self.residual = residual
        self.ffn = ffn
        self._pos_embed_cache: Dict[Tuple, torch.Tensor] = {}
        # Which of the first L-1 blocks can run through scaled_dot_product_attention.
        self._fusable = [is_standard_block(block) for block in visual.transformer.resblocks[:-1]]

    @classmethod
    def from_config(cls, visual: nn.Module, cfg) -> "DenseCLIPEncoder":
        """The encoder of ``MODEL.CLEARCLIP`` (``ATTENTION``, ``RESIDUAL``, ``FFN``,
        ``NACLIP_GAUSSIAN_STD``) around an open_clip ``visual`` tower."""
        cc = cfg.MODEL.CLEARCLIP
        return cls(visual, cc.ATTENTION, cc.RESIDUAL, cc.FFN, cc.NACLIP_GAUSSIAN_STD)

    @property
    def patch_size(self) -> int:
        return int(self.visual.patch_size[0])

    @property
    def window_multiple(self) -> int:
        """Windows are padded to a multiple of the patch size (see :mod:`.methods`)."""
        return self.patch_size

    uses_text = False

    @property
    def embed_dim(self) -> int:
        return int(self.visual.output_dim)

    def interpolated_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Positional embedding [1 + grid_h * grid_w, C] for a ``grid_h`` x ``grid_w`` patch grid.

        As in the reference: when the token count equals the pretrained one the embedding is
        used as is; otherwise the patch part is resampled bicubically with the scale factor
        ``(grid + 0.1) / pretrained_grid`` (the offset shifts the sampling grid, so the scale
        factor, not the output size, is passed to ``interpolate``). Cached per grid size.
        """
        pos = self.visual.positional_embedding
        grid_h, grid_w = int(grid_h), int(grid_w)  # plain ints also under tracing (fvcore FLOP counts)
        key = (grid_h, grid_w, pos.device, pos.dtype)
        if key not in self._pos_embed_cache:
            self._pos_embed_cache[key] = self._compute_pos_embed(grid_h, grid_w)
        return self._pos_embed_cache[key]

    def _compute_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = self.visual.positional_embedding
        if grid_h * grid_w + 1 == pos.shape[0]:
            return pos
        src_h, src_w = self.visual.grid_size
        width = pos.shape[-1]
        patch_pos = pos[1:].reshape(1, src_h, src_w, width).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos,
            scale_factor=((grid_h + POS_EMBED_INTERP_OFFSET) / src_h, (grid_w + POS_EMBED_INTERP_OFFSET) / src_w),
            mode="bicubic",
        )
        assert patch_pos.shape[-2:] == (grid_h, grid_w), (patch_pos.shape, grid_h, grid_w)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid_h * grid_w, width)
        return torch.cat([pos[:1], patch_pos], dim=0)

    def _apply(self, fn, *args, **kwargs):
        self._pos_embed_cache.clear()  # device or dtype may change
        return super()._apply(fn, *args, **kwargs)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding + class token + positional embedding + ``ln_pre``: [B, 1 + N, C]."""
        visual = self.visual
        x = visual.conv1(images)
        batch, width, grid_h, grid_w = x.shape
        x = x.reshape(batch, width, grid_h * grid_w).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).expand(batch, 1, width)
        x = torch.cat([cls, x], dim=1)
        x = x + self.interpolated_pos_embed(grid_h, grid_w).to(x.dtype)
        return visual.ln_pre(x)

    def forward_until_last_block(self, images: torch.Tensor, fused: bool = True) -> torch.Tensor:
        """Tokens entering the last block, [B, 1 + N, C] (batch first).

        ``fused``: run standard open_clip blocks with ``scaled_dot_product_attention`` (same
        result); False calls every block's own ``forward`` (open_clip's code path).
        """
        x = self.embed(images)
        for x in self.blocks_before_last(x, self.token_layout(*images.shape[-2:]), fused):
            pass
        return x

    def blocks_before_last(self, x: torch.Tensor, layout: TokenLayout, fused: bool = True) -> Iterator[torch.Tensor]:
        """Run the first L-1 blocks on embedded tokens ``x`` [B, 1 + N, C] (:meth:`embed`),
        yielding each block's output [B, 1 + N, C] (``fused`` as in :meth:`forward_until_last_block`)."""
        for block, fusable in zip(self.visual.transformer.resblocks[:-1], self._fusable):
            if fused and fusable:
                x = decomposed_block_forward(block, x, qk_attention, residual=True, ffn=True, layout=layout)
            else:
                x = self.open_clip_block(block, x)
            yield x

    def open_clip_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``block.forward`` on batch-first tokens, whatever layout the block takes."""
        if takes_batch_first(getattr(block, "attn", None)):
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` and the visual projection on every patch token; drops the class token."""
        return self.project(tokens[:, 1:])

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` and the visual projection on each of ``tokens``: [B, N, C] -> [B, N, D]."""
        x = self.visual.ln_post(tokens)
        if self.visual.proj is not None:
            x = x @ self.visual.proj
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.forward_until_last_block(images)
        last_block = self.visual.transformer.resblocks[-1]
        layout = self.token_layout(*images.shape[-2:])
        x = decomposed_block_forward(last_block, x, self.attention, self.residual, self.ffn, layout)
        return self.project_tokens(x)

    def grid_shape(self, height: int, width: int) -> Tuple[int, int]:
        """Patch-grid size for an input of ``height`` x ``width`` pixels."""
        return height // self.patch_size, width // self.patch_size

    def token_layout(self, height: int, width: int) -> TokenLayout:
        """Token layout (class token, then the patch grid) for ``height`` x ``width`` pixels."""
        return TokenLayout(*self.grid_shape(height, width))


def check_vision_tower(visual: nn.Module) -> None:
    """Refuse image towers the decomposition cannot handle, with the reason."""
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
    if not all(hasattr(visual, name) for name in needed):
        raise ClearCLIPError(
            f"the image tower {type(visual).__name__} is not an open_clip VisionTransformer; choose a ViT MODEL_NAME"
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise ClearCLIPError(
            "image towers with attention pooling (CoCa-style attentional_pool) are not supported: their "
            "embedding is a learned query's cross-attention over all tokens, so a patch token has no "
            "counterpart in the image-text space; choose a ViT with class-token or average pooling"
        )
    if getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        raise ClearCLIPError(f"image towers with pool_type {visual.pool_type!r} are not supported (need 'tok' or 'avg')")
    if visual.patch_size[0] != visual.patch_size[1]:
        raise ClearCLIPError(f"non-square patches {visual.patch_size} are not supported")
    src_h, src_w = visual.grid_size
    if src_h * src_w + 1 != visual.positional_embedding.shape[0]:
        raise ClearCLIPError("the positional embedding does not match the patch grid of the image tower")
    check_decomposable_block(visual.transformer.resblocks[-1])
