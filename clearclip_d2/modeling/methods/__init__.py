"""The image encoders of the training-free family (``MODEL.CLEARCLIP.ENCODER``).

A method of the family (ClearCLIP, SCLIP, NACLIP, ProxyCLIP, ...) is a preset
(``configs/methods/<method>.yaml``) of the shared pipeline of :class:`ClearCLIPSegmentor`
(resize, windows, text classifier, logit scale, refinement, thresholds) together with the
image encoder that gives its dense features. Methods that change only the last block of the
CLIP ViT use the ``decomposed`` encoder (the ``ATTENTION``/``RESIDUAL``/``FFN`` switches);
a method that changes more registers its own encoder here, in one module.

An encoder is an ``nn.Module`` with:

- ``patch_size`` (int): pixels per feature of its output grid;
- ``window_multiple`` (int): windows are zero-padded (``WINDOW_PADDING centred``) to a multiple
  of this, in pixels (the patch size, or a common multiple when a second backbone sees the
  window too);
- ``uses_text`` (bool): ``forward`` also takes ``text_embeddings`` [Q, D] (unit rows), for
  methods whose image features depend on a first segmentation;
- ``forward(images)`` (or ``forward(images, text_embeddings=...)``): CLIP-normalised images
  [B, 3, h, w] -> [B, (h // patch_size) * (w // patch_size), D] features in the joint
  image-text space (not normalised), patches in row-major order.
"""

from . import decomposed  # noqa: F401  (registers "decomposed")
from . import proxyclip  # noqa: F401  (registers "proxyclip")
from . import sc_clip  # noqa: F401  (registers "sc_clip")
from . import resclip  # noqa: F401  (registers "resclip")
from .build import ENCODER_REGISTRY, build_dense_encoder, check_encoder_name, encoder_names

__all__ = ["ENCODER_REGISTRY", "build_dense_encoder", "check_encoder_name", "encoder_names"]
