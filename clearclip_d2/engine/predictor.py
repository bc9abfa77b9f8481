"""``ClearCLIPPredictor``: Detectron2's ``DefaultPredictor`` for ClearCLIP.

Example::

    from detectron2.config import get_cfg
    import clearclip_d2
    from clearclip_d2.engine import ClearCLIPPredictor

    cfg = get_cfg()
    clearclip_d2.add_clearclip_config(cfg)
    cfg.merge_from_file("configs/clearclip_coco.yaml")
    predictor = ClearCLIPPredictor(cfg)
    predictor.set_vocabulary(["cat, kitten", "grass, lawn", "sky"])
    probs = predictor(image_rgb)          # Tensor[3, H, W]
    labels = probs.argmax(0)              # index into predictor.class_names
"""

from typing import Dict, List

import numpy as np
import torch
from detectron2.modeling import build_model

from ..data.transforms import ResizeShortLongEdge
from ..data.vocabulary import Vocabulary
from ..modeling.checkpoint import load_weights
from ..modeling.inference.class_chunks import LABELS_KEY, output_labels
from ..checks import check_input_format
from ..utils.errors import ClearCLIPError


class ClearCLIPPredictor:
    """Build the model of ``cfg`` once; predict per-class probabilities for single images.

    * the model is built with ``detectron2.modeling.build_model`` (meta-architecture
      ``ClearCLIPSegmentor``, registered by ``import clearclip_d2``) and put in eval mode;
      ``MODEL.WEIGHTS`` is loaded if set, as tensors only (CLIP weights come from ``MODEL.CLEARCLIP.PRETRAINED``);
    * images are resized as at test time (:class:`~clearclip_d2.data.ResizeShortLongEdge` with
      ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``) and predicted at their original size;
    * the vocabulary can be changed at any time with :meth:`set_vocabulary`, without rebuilding
      the image encoder.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()  # the model may modify its cfg
        self.model = build_model(self.cfg)
        self.model.eval()
        if self.cfg.MODEL.WEIGHTS:
            load_weights(self.model, self.cfg.MODEL.WEIGHTS, self.cfg.MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS)
        self.aug = ResizeShortLongEdge(self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = self.cfg.INPUT.FORMAT
        check_input_format(self.input_format)

    # ----------------------------------------------------------------- vocabulary
    def set_vocabulary(self, vocabulary) -> None:
        """Segment these classes from now on: a :class:`~clearclip_d2.data.Vocabulary` or entries
        such as ``["cat, kitten", "grass"]`` (commas separate the synonyms of one class)."""
        if isinstance(vocabulary, str):
            raise ClearCLIPError("set_vocabulary() takes a list of class entries, not one string")
        self.model.set_vocabulary(vocabulary)

    @property
    def vocabulary(self) -> Vocabulary:
        return self.model.vocabulary

    @property
    def class_names(self) -> List[str]:
        """Display name of each output channel (the first synonym of each class)."""
        if self.model.vocabulary is None:
            return []
        return self.model.vocabulary.class_names

    # ----------------------------------------------------------------- inference
    def __call__(self, original_image: np.ndarray) -> torch.Tensor:
        """
        Args:
            original_image: H x W x 3 uint8 array in ``cfg.INPUT.FORMAT`` channel order.
        Returns:
            Tensor[K, H, W] float32 per-class probabilities (K = vocabulary size) at the input's
            size, on ``cfg.MODEL.DEVICE``; ``argmax(0)`` is the predicted class map. Refused when
            K' x max(H x W, resized pixels) (K' = queries) passes ``MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS``: use
            :meth:`predict_labels`, whose memory does not grow with the vocabulary.
        """
        output = self.predict(original_image)
        if "sem_seg" not in output:
            height, width = output[LABELS_KEY].shape
            raise ClearCLIPError(
                f"the probability maps of {len(self.model.vocabulary.queries)} queries at {height} x {width} (and at "
                f"the resized image's size) pass "
                f"MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS {self.model.max_dense_elements}; use predict_labels() "
                f"(memory bounded by MODEL.CLEARCLIP.CLASS_CHUNK) or raise MAX_DENSE_ELEMENTS"
            )
        return output["sem_seg"]

    def predict(self, original_image: np.ndarray) -> Dict[str, torch.Tensor]:
        """The model's output for one image: ``sem_seg`` [K, H, W], or for outputs too large for
        that ``sem_seg_labels`` [H, W] and ``sem_seg_confidence`` [H, W] (see the meta-architecture)."""
        image = np.asarray(original_image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ClearCLIPError(f"expected an H x W x 3 image, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ClearCLIPError(f"expected a uint8 image, got dtype {image.dtype}")
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with torch.no_grad():
            return self.model([{"image": tensor, "height": height, "width": width}])[0]

    def predict_labels(self, original_image: np.ndarray) -> torch.Tensor:
        """Tensor[H, W] int64 class indices (argmax of :meth:`__call__`), on the CPU, for any
        image and vocabulary size."""
        return output_labels(self.predict(original_image)).cpu()
