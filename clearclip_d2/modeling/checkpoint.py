"""The one way this project loads Detectron2 weights (``MODEL.WEIGHTS``, ``MASK_MODEL_WEIGHTS``)
without running code from the file.

Detectron2's ``DetectionCheckpointer`` unpickles ``.pkl`` files (and fvcore's ``torch.load``
follows the installed PyTorch's default), so a crafted file could run code. The checkpointer here
is Detectron2's, with its documented file-reading hook (``_load_file``, "can be overwritten by
subclasses to support different formats") reading the file through
:func:`~.clip.loading.read_checkpoint_safely`: safetensors, or ``torch.load(weights_only=True)``.
Everything else -- URLs, model-zoo name matching, shape checks, optimizer and scheduler state on
a training resume -- is Detectron2's. A Detectron2 ``.pkl`` (model-zoo format) is read by
Detectron2 only with the opt-in ``MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS True``.
"""

from detectron2.checkpoint import DetectionCheckpointer

from ..checks import check_weights_file
from .clip.loading import read_checkpoint_safely


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that reads files as tensors only (``.pkl`` only if ``trust_pickled``)."""

    def __init__(self, model, save_dir: str = "", *, trust_pickled: bool = False, key: str = "MODEL.WEIGHTS", **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.trust_pickled = trust_pickled
        self.key = key

    def _load_file(self, filename: str):
        check_weights_file(filename, self.key, self.trust_pickled)
        if filename.endswith(".pkl"):
            return super()._load_file(filename)  # the user trusts this file: Detectron2's model-zoo reader
        loaded = read_checkpoint_safely(filename, self.key)
        if not isinstance(loaded, dict):
            loaded = {"model": loaded}
        return loaded if "model" in loaded else {"model": loaded}


def safe_checkpointer_like(checkpointer: DetectionCheckpointer, cfg) -> SafeDetectionCheckpointer:
    """A :class:`SafeDetectionCheckpointer` with the model, folder and checkpointables of
    ``checkpointer`` (the one Detectron2's ``DefaultTrainer`` builds)."""
    return SafeDetectionCheckpointer(
        checkpointer.model,
        checkpointer.save_dir,
        trust_pickled=cfg.MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS,
        save_to_disk=checkpointer.save_to_disk,
        **checkpointer.checkpointables,
    )


def load_weights(model, path: str, trust_pickled: bool = False, key: str = "MODEL.WEIGHTS") -> None:
    """Load the Detectron2 weights file (or URL) ``path`` into ``model``, tensors only."""
    check_weights_file(path, key, trust_pickled)
    SafeDetectionCheckpointer(model, trust_pickled=trust_pickled, key=key).load(path)
