"""ClearCLIP as a Detectron2 backbone: frozen dense decomposed CLIP features.

``MODEL.BACKBONE.NAME "build_clearclip_backbone"`` gives any Detectron2 meta-architecture the
feature map ``{"clip": [B, D, ceil(H/p), ceil(W/p)]}`` (D: CLIP's joint embedding size, p: the
patch size): the image tower of ``MODEL.CLEARCLIP.MODEL_NAME`` / ``PRETRAINED`` with its last
block decomposed as ``ATTENTION`` / ``RESIDUAL`` / ``FFN`` say, i.e. the features ClearCLIP
compares with the text embeddings. The tower is frozen (no gradients, always in eval mode), so
a head on top (``SemSegFPNHead``, a linear probe...) trains alone.
"""

from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..checks import check_input_format
from ..utils.errors import ClearCLIPError
from .clip.loading import build_clip_model_from_config
from .clip.dense_encoder import DenseCLIPEncoder

FEATURE_NAME = "clip"


class ClearCLIPBackbone(Backbone):
    """Frozen :class:`DenseCLIPEncoder` as a Detectron2 :class:`Backbone`.

    Input: [B, 3, H, W] images normalised by the meta-architecture (``MODEL.PIXEL_MEAN`` /
    ``PIXEL_STD``, CLIP's statistics with ``add_clearclip_config``), channels in
    ``input_format``. Detectron2's meta-architectures pad the batch to ``size_divisibility``
    (the patch size); other sizes are zero-padded at the bottom/right here. The whole image
    goes through the tower in one pass, the positional embedding resampled to its patch grid.

    Output: ``{"clip": [B, D, ceil(H/p), ceil(W/p)]}``, stride p; unit length per patch if
    ``l2_normalize``.
    """

    def __init__(self, encoder: DenseCLIPEncoder, input_format: str = "RGB", l2_normalize: bool = True):
        super().__init__()
        check_input_format(input_format, owner="the ClearCLIP backbone")
        self.encoder = encoder.requires_grad_(False).eval()
        self.input_format = input_format
        self.l2_normalize = bool(l2_normalize)
        self._out_features = [FEATURE_NAME]
        self._out_feature_channels = {FEATURE_NAME: encoder.embed_dim}
        self._out_feature_strides = {FEATURE_NAME: encoder.patch_size}

    @property
    def size_divisibility(self) -> int:
        return self.encoder.patch_size

    def train(self, mode: bool = True):
        """The head may train; the CLIP tower stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {FEATURE_NAME: ShapeSpec(channels=self.encoder.embed_dim, stride=self.encoder.patch_size)}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ClearCLIPError(f"the ClearCLIP backbone takes [B, 3, H, W] images, got {tuple(images.shape)}")
        patch = self.encoder.patch_size
        if self.input_format == "BGR":
            images = images.flip(1)
        pad_h, pad_w = -images.shape[-2] % patch, -images.shape[-1] % patch
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        grid_h, grid_w = images.shape[-2] // patch, images.shape[-1] // patch
        with torch.no_grad():
            tokens = self.encoder(images)  # [B, grid_h * grid_w, D], row-major
            if self.l2_normalize:
                tokens = F.normalize(tokens, dim=-1)
        features = tokens.transpose(1, 2).reshape(images.shape[0], -1, grid_h, grid_w)
        return {FEATURE_NAME: features.float().contiguous()}


@BACKBONE_REGISTRY.register()
def build_clearclip_backbone(cfg, input_shape: ShapeSpec) -> ClearCLIPBackbone:
    """``MODEL.BACKBONE.NAME "build_clearclip_backbone"``: the frozen ClearCLIP image tower of
    ``MODEL.CLEARCLIP.*`` (the text tower is not kept)."""
    if input_shape.channels not in (None, 3):
        raise ClearCLIPError(f"the ClearCLIP backbone takes 3-channel images, not {input_shape.channels}")
    cc = cfg.MODEL.CLEARCLIP
    clip_model, _, _ = build_clip_model_from_config(cfg)
    encoder = DenseCLIPEncoder.from_config(clip_model.visual, cfg)
    return ClearCLIPBackbone(encoder, cfg.INPUT.FORMAT, cc.BACKBONE_L2_NORMALIZE)


def check_clearclip_backbone_config(cfg) -> None:
    """Checks before any process starts: the CLIP keys, and, for ``SemSegFPNHead`` on the
    single ``clip`` feature, ``COMMON_STRIDE`` equal to the patch size."""
    import open_clip

    from ..config import check_clearclip_config
    from .clip.loading import resolve_architecture

    check_clearclip_config(cfg)
    arch_cfg = open_clip.get_model_config(resolve_architecture(cfg.MODEL.CLEARCLIP.MODEL_NAME)) or {}
    patch = arch_cfg.get("vision_cfg", {}).get("patch_size")
    head = cfg.MODEL.SEM_SEG_HEAD
    if head.NAME != "SemSegFPNHead":
        return
    if list(head.IN_FEATURES) != [FEATURE_NAME]:
        raise ClearCLIPError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES {list(head.IN_FEATURES)}: the ClearCLIP backbone gives one feature, 'clip'"
        )
    if patch and head.COMMON_STRIDE != patch:
        raise ClearCLIPError(
            f"MODEL.SEM_SEG_HEAD.COMMON_STRIDE {head.COMMON_STRIDE} must equal the patch size {patch} of "
            f"{cfg.MODEL.CLEARCLIP.MODEL_NAME} (the stride of the 'clip' feature)"
        )
