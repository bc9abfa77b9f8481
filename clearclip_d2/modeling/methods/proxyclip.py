"""``ENCODER proxyclip``: ProxyCLIP (Lan et al., ECCV 2024; github.com/mc-lan/ProxyCLIP).

CLIP's last block is replaced by *proxy attention*: the attention weights come from a vision
foundation model (VFM, a timm ViT: DINO ViT-B/8 by default), applied to CLIP's value vectors.
For a window [B, 3, h, w] (CLIP-normalised):

1. the VFM sees the window re-normalised with ImageNet statistics (:func:`renormalise_for_vfm`)
   and gives its last block's tokens after the final norm, class (and register) tokens dropped
   (:func:`vfm_patch_tokens`): [B, I*J, C] on the VFM grid I, J = h // p, w // p;
2. their cosine similarities, per window ``(s - mean(s) * beta) * gamma``, negatives masked,
   softmax over each row (:func:`proxy_attention_weights`): [B, I*J, I*J], the same for every head;
3. CLIP's first L-1 blocks as usual, then the last block's ``ln_1`` and value projection only;
   the values (class token dropped) bilinearly resized from CLIP's grid (h // 16, w // 16) to
   the VFM's (:func:`values_on_vfm_grid`); attended, heads merged through ``out_proj``; no
   residual, no MLP, no LayerScale (the authors' ``custom_attn``);
4. ``ln_post`` and the projection on every token: [B, I*J, D] on the VFM grid, so the encoder's
   ``patch_size`` is the VFM's.

Decisions where the authors' code is not a function of one window (docs/METHODS.md#proxyclip):

- the mean of step 2 is taken per window; the authors take one mean over the whole tensor, i.e.
  over every window of the batch (their batch is one window), so the plugin's results do not
  depend on ``WINDOW_BATCH`` and equal theirs window by window;
- each token's similarity with itself is never masked. The authors' masking empties every row of
  a window whose mean similarity exceeds ``1 / beta`` (near-uniform windows: the diagonal, 1, is
  the row's largest entry) and the window's output is NaN; here each token then keeps its own
  value (MaskCLIP-like). Wherever the authors' output is finite the diagonal survives their mask
  anyway, so the results are the same;
- the VFM grid is (h // p, w // p) and CLIP's (h // 16, w // 16); the authors' code takes the
  height twice, which is the same on every (square) window of their configs.

Position embeddings of the VFM: ViTs whose ``pos_embed`` covers the class token and that have no
register tokens (DINO, DINOv2 without registers) are interpolated DINO's way
(:func:`dino_pos_embed`: bicubic with the scale factor ``(grid + 0.1) / pretrained grid``, as the
torch.hub code of both), which timm's ``dynamic_img_size`` does not do (it resamples to the size,
antialiased). ViTs with register tokens (``*_reg4_dinov2``) run timm's own ``forward_features``
with ``dynamic_img_size``, which is what their torch.hub code does (no offset, antialiased).
"""

import os
from typing import Tuple

import timm
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ...checks import register_config_check
from ...constants import POS_EMBED_INTERP_OFFSET, PROXY_PRETRAINED_FROM_TIMM
from ...utils.errors import ClearCLIPError
from ..clip.attention_adapter import merge_heads, qkv_projections, split_heads
from ..clip.dense_encoder import DenseCLIPEncoder
from ..clip.loading import checkpoint_mismatches, checkpoint_value_problems, read_state_dict_safely
from .build import ENCODER_REGISTRY

KEY = "MODEL.CLEARCLIP.PROXY"


# --------------------------------------------------------------------------- checks
def check_vfm_name(name: str) -> None:
    """``PROXY.MODEL_NAME`` must be a timm model name (with or without a pretrained tag)."""
    if not timm.is_model(name):
        raise ClearCLIPError(
            f"{KEY}.MODEL_NAME {name!r} is not a timm model; use a timm ViT name such as "
            f"'vit_base_patch8_224.dino' (see timm.list_models('vit_*dino*'))"
        )


def check_vfm_pretrained(pretrained: str) -> None:
    """``PROXY.PRETRAINED``: "" (random), "timm" (timm's download) or an existing file."""
    if pretrained in ("", PROXY_PRETRAINED_FROM_TIMM) or os.path.isfile(pretrained):
        return
    raise ClearCLIPError(
        f"{KEY}.PRETRAINED {pretrained!r} is not a file; give a local .safetensors/.pth state dict, "
        f"{PROXY_PRETRAINED_FROM_TIMM!r} (timm's own weights) or '' (random weights)"
    )


def check_proxy_settings(window_multiple: int, beta: float, gamma: float) -> None:
    """``PROXY.WINDOW_MULTIPLE`` a positive integer; ``BETA`` and ``GAMMA`` positive."""
    if int(window_multiple) != window_multiple or window_multiple < 1:
        raise ClearCLIPError(f"{KEY}.WINDOW_MULTIPLE must be a positive integer (pixels), got {window_multiple!r}")
    for name, value in (("BETA", beta), ("GAMMA", gamma)):
        if not value > 0:
            raise ClearCLIPError(f"{KEY}.{name} must be positive (the authors': beta 1.2, gamma 3), got {value!r}")


@register_config_check
def check_proxy_config(cfg) -> None:
    """The ``PROXY`` keys, when ``ENCODER`` is "proxyclip" (run by ``check_clearclip_config``)."""
    if cfg.MODEL.CLEARCLIP.ENCODER != "proxyclip":
        return
    proxy = cfg.MODEL.CLEARCLIP.PROXY
    check_vfm_name(proxy.MODEL_NAME)
    check_vfm_pretrained(proxy.PRETRAINED)
    check_proxy_settings(proxy.WINDOW_MULTIPLE, proxy.BETA, proxy.GAMMA)


# --------------------------------------------------------------------------- the VFM
def build_vfm(name: str, pretrained: str) -> VisionTransformer:
    """The timm ViT ``name`` (no classifier head, any input size), in eval mode, with weights:
    ``pretrained`` "" = random, "timm" = timm's own download, else a local file read as tensors
    only and loaded strictly (timm's key names; DINO's torch.hub checkpoints use the same)."""
    check_vfm_name(name)
    check_vfm_pretrained(pretrained)
    from_timm = pretrained == PROXY_PRETRAINED_FROM_TIMM
    try:
        vfm = timm.create_model(name, pretrained=from_timm, num_classes=0, dynamic_img_size=True)
    except TypeError as e:  # the architecture takes no dynamic_img_size: not a timm ViT
        raise ClearCLIPError(f"{KEY}.MODEL_NAME {name!r} is not a timm VisionTransformer ({e})") from e
    except Exception as e:
        if not from_timm:
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClearCLIPError(
            f"timm could not get the weights of {KEY}.MODEL_NAME {name!r} ({reason}); download them where "
            f"there is a connection and set {KEY}.PRETRAINED to the file"
        ) from e
    check_vfm(vfm, name)
    if pretrained and not from_timm:
        load_vfm_weights(vfm, pretrained)
    return vfm.eval()


def check_vfm(vfm: nn.Module, name: str) -> None:
    """Refuse VFMs the proxy attention cannot use, with the reason."""
    if not isinstance(vfm, VisionTransformer):
        raise ClearCLIPError(
            f"{KEY}.MODEL_NAME {name!r} builds a {type(vfm).__name__}; ProxyCLIP needs a timm VisionTransformer "
            f"(DINO or DINOv2 ViTs)"
        )
    patch = tuple(vfm.patch_embed.patch_size)
    if patch[0] != patch[1]:
        raise ClearCLIPError(f"{KEY}.MODEL_NAME {name!r} has non-square patches {patch}")


def load_vfm_weights(vfm: nn.Module, path: str) -> None:
    """Load a state dict file (tensors only) into ``vfm``; refuse it in one line if it does not fit."""
    state_dict = read_state_dict_safely(path)
    problems = checkpoint_mismatches(vfm.state_dict(), state_dict) or checkpoint_value_problems(state_dict)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ClearCLIPError(
            f"{KEY}.PRETRAINED {path} does not fit {KEY}.MODEL_NAME: {'; '.join(problems[:3])}{more}"
        )
    vfm.load_state_dict(state_dict, strict=True)


def vfm_patch_size(vfm: nn.Module) -> int:
    return int(vfm.patch_embed.patch_size[0])


def renormalise_for_vfm(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, h, w] CLIP-normalised -> ImageNet-normalised, as the authors: un-normalised with
    CLIP's 0-1 statistics, normalised with ImageNet's (whatever the VFM). Applied after the
    window's zero padding, so padded pixels are (CLIP mean - ImageNet mean) / ImageNet std."""

    def stat(values):
        return torch.tensor(values, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)

    return (images * stat(OPENAI_DATASET_STD) + stat(OPENAI_DATASET_MEAN) - stat(IMAGENET_DEFAULT_MEAN)) / stat(
        IMAGENET_DEFAULT_STD
    )


def uses_dino_interpolation(vfm: VisionTransformer) -> bool:
    """Whether the VFM's positions are interpolated DINO's way (see the module docstring): its
    ``pos_embed`` covers the class token and it has no register tokens."""
    return vfm.cls_token is not None and not vfm.no_embed_class and vfm.num_reg_tokens == 0


def dino_pos_embed(vfm: VisionTransformer, height: int, width: int) -> torch.Tensor:
    """DINO's ``interpolate_pos_encoding`` of ``vfm.pos_embed`` for a ``height`` x ``width`` input:
    [1, 1 + (height // p) * (width // p), C].

    Kept as is when the token count is the pretrained one and the input is square (DINO's
    early-out, in pixels); else bicubic (no antialias) with the scale factor
    ``(grid + 0.1) / pretrained grid``, so the output has ``grid`` rows but other sampling
    positions than a resampling to that size.
    """
    pos = vfm.pos_embed
    patch = vfm_patch_size(vfm)
    grid_h, grid_w = height // patch, width // patch
    if grid_h * grid_w == pos.shape[1] - 1 and height == width:
        return pos
    src_h, src_w = vfm.patch_embed.grid_size
    patch_pos = pos[:, 1:].reshape(1, src_h, src_w, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(
        patch_pos,
        scale_factor=((grid_h + POS_EMBED_INTERP_OFFSET) / src_h, (grid_w + POS_EMBED_INTERP_OFFSET) / src_w),
        mode="bicubic",
    )
    assert patch_pos.shape[-2:] == (grid_h, grid_w), (patch_pos.shape, grid_h, grid_w)
    return torch.cat([pos[:, :1], patch_pos.flatten(2).transpose(1, 2)], dim=1)


def vfm_patch_tokens(vfm: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """The VFM's last block output after its final norm, prefix tokens dropped:
    [B, 3, h, w] (VFM-normalised) -> [B, (h // p) * (w // p), C], patches row-major.

    Pixels past the last whole patch are dropped (as the authors' patch embedding does; timm's
    refuses such sizes)."""
    height, width = images.shape[-2:]
    patch = vfm_patch_size(vfm)
    images = images[..., : height // patch * patch, : width // patch * patch]
    if not uses_dino_interpolation(vfm):
        return vfm.forward_features(images)[:, vfm.num_prefix_tokens :]
    x = vfm.patch_embed(images)  # [B, h // p, w // p, C] (dynamic_img_size: NHWC)
    x = x.flatten(1, 2)
    x = torch.cat([vfm.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
    x = vfm.norm_pre(x + dino_pos_embed(vfm, height, width).to(x.dtype))
    for block in vfm.blocks:
        x = block(x)
    return vfm.norm(x)[:, 1:]


# --------------------------------------------------------------------------- proxy attention
def proxy_attention_weights(proxy: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """[B, N, C] VFM tokens -> [B, N, N] attention weights (rows sum to 1).

    Cosine similarities ``s``, ``(s - mean(s) * beta) * gamma`` with the mean over each window's
    N x N entries, entries below 0 masked (0 itself kept) except the diagonal, softmax per row.
    """
    unit = F.normalize(proxy, dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    similarity = (similarity - similarity.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    own = torch.eye(similarity.shape[-1], dtype=torch.bool, device=similarity.device)
    masked = (similarity < 0) & ~own
    return similarity.masked_fill(masked, float("-inf")).softmax(dim=-1)


def values_on_vfm_grid(block: nn.Module, tokens: torch.Tensor, clip_grid: Tuple[int, int], vfm_grid: Tuple[int, int]):
    """The last block's value vectors of the patch tokens on the VFM grid.

    Args:
        block: CLIP's last residual block (``ln_1``, ``attn``).
        tokens: [B, 1 + h*w, C] its input (class token first), ``clip_grid`` = (h, w).
    Returns:
        [B, heads, I*J, C / heads]: ``v`` of ``ln_1(tokens)`` bilinearly resized to ``vfm_grid`` (I, J).
    """
    weight, bias = qkv_projections(block.attn)[2]
    values = split_heads(F.linear(block.ln_1(tokens[:, 1:]), weight, bias), block.attn.num_heads)
    batch, heads, _, head_dim = values.shape
    values = values.reshape(batch * heads, *clip_grid, head_dim).permute(0, 3, 1, 2)
    values = F.interpolate(values, size=vfm_grid, mode="bilinear", align_corners=False)
    return values.flatten(2).transpose(1, 2).reshape(batch, heads, -1, head_dim)


class ProxyCLIPEncoder(nn.Module):
    """CLIP's ViT whose last block attends with a VFM's token similarities (the encoder
    contract of :mod:`clearclip_d2.modeling.methods`; features on the VFM's patch grid)."""

    uses_text = False

    def __init__(self, clip: DenseCLIPEncoder, vfm: VisionTransformer, window_multiple: int, beta: float, gamma: float):
        super().__init__()
        check_proxy_settings(window_multiple, beta, gamma)
        self.clip = clip
        self.vfm = vfm
        self.window_multiple = int(window_multiple)
        self.beta, self.gamma = float(beta), float(gamma)

    @property
    def patch_size(self) -> int:
        """The VFM's patch: one output feature per VFM patch."""
        return vfm_patch_size(self.vfm)

    @property
    def embed_dim(self) -> int:
        return self.clip.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] CLIP-normalised -> [B, (h // p) * (w // p), D], p the VFM's patch."""
        vfm_grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        weights = proxy_attention_weights(vfm_patch_tokens(self.vfm, renormalise_for_vfm(images)), self.beta, self.gamma)
        block = self.clip.visual.transformer.resblocks[-1]
        tokens = self.clip.forward_until_last_block(images)
        values = values_on_vfm_grid(block, tokens, self.clip.grid_shape(*images.shape[-2:]), vfm_grid)
        attended = merge_heads(block.attn, weights.unsqueeze(1).to(values.dtype) @ values)
        return self.clip.project(attended)


@ENCODER_REGISTRY.register()
def proxyclip(cfg, clip_model: nn.Module) -> ProxyCLIPEncoder:
    """:class:`ProxyCLIPEncoder` around ``clip_model``'s image tower and the VFM of ``MODEL.CLEARCLIP.PROXY``."""
    proxy = cfg.MODEL.CLEARCLIP.PROXY
    vfm = build_vfm(proxy.MODEL_NAME, proxy.PRETRAINED)
    return ProxyCLIPEncoder(DenseCLIPEncoder(clip_model.visual), vfm, proxy.WINDOW_MULTIPLE, proxy.BETA, proxy.GAMMA)
