"""``ClearCLIPSegmentor``: training-free open-vocabulary semantic segmentation."""

import functools
import logging
from typing import Callable, Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..data.vocabulary import Vocabulary, load_vocabulary_file, vocabulary_from_names
from ..utils.errors import ClearCLIPError
from .clip_loading import build_clip_model
from .dense_encoder import DenseCLIPEncoder
from .refinement import build_refiner
from .slide_inference import logits_to_probabilities, slide_inference, whole_image_logits
from .text_classifier import build_text_classifier, check_templates

logger = logging.getLogger(__name__)


def vocabulary_of_dataset(dataset_name: str) -> Vocabulary:
    """The vocabulary of a registered dataset: its ``stuff_classes`` (commas separate synonyms)."""
    classes = MetadataCatalog.get(dataset_name).get("stuff_classes")
    if not classes:
        raise ClearCLIPError(
            f"dataset {dataset_name!r} has no stuff_classes in its metadata; set MODEL.CLEARCLIP.CLASS_NAMES_FILE"
        )
    return vocabulary_from_names(classes, source=f"stuff_classes of {dataset_name}")


def vocabulary_from_config(cfg) -> Optional[Vocabulary]:
    """``CLASS_NAMES_FILE`` if set, else the first test dataset's classes, else None."""
    if cfg.MODEL.CLEARCLIP.CLASS_NAMES_FILE:
        return load_vocabulary_file(cfg.MODEL.CLEARCLIP.CLASS_NAMES_FILE)
    if len(cfg.DATASETS.TEST):
        return vocabulary_of_dataset(cfg.DATASETS.TEST[0])
    return None


@META_ARCH_REGISTRY.register()
class ClearCLIPSegmentor(nn.Module):
    """ClearCLIP (ECCV 2024) as a Detectron2 meta-architecture.

    Input: Detectron2's list of dicts with ``image`` (uint8 [3, H, W] in ``INPUT.FORMAT``)
    and optionally ``height``/``width`` (the size to predict at; default the image size).
    Output: one ``{"sem_seg": Tensor[K, height, width]}`` per image, the per-class
    probabilities of the reference, whose argmax is the prediction (background threshold
    included, see :func:`logits_to_probabilities`).
    """

    @configurable
    def __init__(
        self,
        *,
        clip_model: nn.Module,
        tokenizer: Callable,
        encoder: DenseCLIPEncoder,
        vocabulary: Optional[Vocabulary],
        prompt_templates: Sequence[str],
        logit_scale: float,
        prob_threshold: float,
        slide_crop: int,
        slide_stride: int,
        window_batch: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "RGB",
        text_batch_size: int = 256,
        fixed_vocabulary: bool = False,
        refiner: Optional[nn.Module] = None,
    ):
        """
        Args:
            clip_model: the open_clip model; its text tower embeds the class queries.
            encoder: dense features of the (decomposed) image tower of ``clip_model``.
            vocabulary: classes to segment; can be changed with :meth:`set_vocabulary`.
            prompt_templates: templates with ``{}`` for the class name.
            logit_scale: multiplies the cosine similarities before the softmax.
            prob_threshold: background threshold on the highest class probability.
            slide_crop, slide_stride: sliding window size and step in pixels; crop 0 = whole image.
            window_batch: windows per encoder batch.
            pixel_mean, pixel_std: per channel, in ``input_format`` order, 0-255 scale.
            input_format: "RGB" or "BGR", the channel order of ``image``.
            fixed_vocabulary: keep ``vocabulary`` when evaluating datasets with other classes.
            refiner: ``refiner(probs [K, H, W], image) -> [K, H, W]`` applied before the
                background threshold (``MODEL.CLEARCLIP.REFINE``, see :mod:`.refinement`).
        """
        super().__init__()
        check_templates(prompt_templates)
        if input_format not in ("RGB", "BGR"):
            raise ClearCLIPError(f"INPUT.FORMAT {input_format!r} is not supported; use RGB or BGR")
        if slide_crop < 0 or (slide_crop > 0 and slide_stride <= 0) or window_batch <= 0:
            raise ClearCLIPError(
                f"bad sliding window (SLIDE_CROP {slide_crop}, SLIDE_STRIDE {slide_stride}, WINDOW_BATCH "
                f"{window_batch}): crop >= 0, stride > 0 and window batch > 0 are needed"
            )
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.prompt_templates = list(prompt_templates)
        self.logit_scale = float(logit_scale)
        self.prob_threshold = float(prob_threshold)
        self.slide_crop = int(slide_crop)
        self.slide_stride = int(slide_stride)
        self.window_batch = int(window_batch)
        self.input_format = input_format
        self.text_batch_size = int(text_batch_size)
        self.fixed_vocabulary = fixed_vocabulary
        self.refiner = refiner
        rgb = (lambda v: list(v)[::-1]) if input_format == "BGR" else list
        self.register_buffer("pixel_mean", torch.tensor(rgb(pixel_mean), dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(rgb(pixel_std), dtype=torch.float32).view(3, 1, 1), False)
        self.vocabulary: Optional[Vocabulary] = None
        self._text_embeddings: Dict[tuple, torch.Tensor] = {}
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    @classmethod
    def from_config(cls, cfg):
        cc = cfg.MODEL.CLEARCLIP
        clip_model, tokenizer, _ = build_clip_model(
            cc.MODEL_NAME, cc.PRETRAINED, force_quick_gelu=cc.FORCE_QUICK_GELU, cache_dir=cc.WEIGHTS_CACHE_DIR or None
        )
        return {
            "clip_model": clip_model,
            "tokenizer": tokenizer,
            "encoder": DenseCLIPEncoder(clip_model.visual, cc.ATTENTION, cc.RESIDUAL, cc.FFN),
            "vocabulary": vocabulary_from_config(cfg),
            "prompt_templates": list(cc.PROMPT_TEMPLATES),
            "logit_scale": cc.LOGIT_SCALE,
            "prob_threshold": cc.PROB_THRESHOLD,
            "slide_crop": cc.SLIDE_CROP,
            "slide_stride": cc.SLIDE_STRIDE,
            "window_batch": cc.WINDOW_BATCH,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "text_batch_size": cc.TEXT_BATCH_SIZE,
            "fixed_vocabulary": bool(cc.CLASS_NAMES_FILE),
            "refiner": build_refiner(cfg),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ----------------------------------------------------------------- vocabulary
    def set_vocabulary(self, vocabulary) -> None:
        """Segment these classes from now on: a :class:`Vocabulary` or a list of entries such as
        ``["cat", "grass, lawn"]``. The image encoder is untouched; text embeddings are computed
        on the next forward and kept in memory per vocabulary."""
        if not isinstance(vocabulary, Vocabulary):
            vocabulary = vocabulary_from_names(list(vocabulary))
        self.vocabulary = vocabulary

    def use_dataset_vocabulary(self, dataset_name: str) -> None:
        """Switch to a dataset's classes, unless a fixed ``CLASS_NAMES_FILE`` was configured."""
        if not self.fixed_vocabulary:
            self.set_vocabulary(vocabulary_of_dataset(dataset_name))

    def text_embeddings(self) -> torch.Tensor:
        """[Q, D] unit text embeddings of the current vocabulary's queries."""
        if self.vocabulary is None:
            raise ClearCLIPError(
                "no vocabulary: set MODEL.CLEARCLIP.CLASS_NAMES_FILE or DATASETS.TEST, or call set_vocabulary()"
            )
        key = (tuple(self.vocabulary.queries), str(self.device))
        if key not in self._text_embeddings:
            logger.info(f"Embedding {len(key[0])} class queries x {len(self.prompt_templates)} prompt templates")
            self._text_embeddings[key] = build_text_classifier(
                self.clip_model, self.tokenizer, self.vocabulary.queries, self.prompt_templates, self.text_batch_size
            )
        return self._text_embeddings[key]

    # ----------------------------------------------------------------- inference
    def preprocess_image(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] in ``input_format`` -> normalised float RGB [3, H, W] on the device."""
        image = image.to(self.device, non_blocking=True).float()
        if self.input_format == "BGR":
            image = image.flip(0)
        return (image - self.pixel_mean) / self.pixel_std

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        if self.training:
            raise ClearCLIPError("ClearCLIP is training-free: run tools/train_net.py with --eval-only")
        with torch.no_grad():
            return self.inference(batched_inputs)

    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        text = self.text_embeddings()
        images = [self.preprocess_image(x["image"]) for x in batched_inputs]
        out_sizes = [(int(x.get("height", img.shape[-2])), int(x.get("width", img.shape[-1]))) for x, img in zip(batched_inputs, images)]
        patch = self.encoder.patch_size
        if self.slide_crop > 0:
            logits = slide_inference(images, self.encoder, text, patch, self.slide_crop, self.slide_stride, self.window_batch)
        else:
            logits = [whole_image_logits(img, self.encoder, text, patch, size) for img, size in zip(images, out_sizes)]
        query_to_class = torch.as_tensor(self.vocabulary.query_to_class, device=self.device)
        return [
            {
                "sem_seg": logits_to_probabilities(
                    image_logits, size, self.logit_scale, query_to_class, len(self.vocabulary), self.prob_threshold,
                    refine=functools.partial(self.refiner, image=x["image"]) if self.refiner is not None else None,
                )
            }
            for image_logits, size, x in zip(logits, out_sizes, batched_inputs)
        ]
