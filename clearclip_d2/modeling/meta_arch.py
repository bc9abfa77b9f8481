"""``ClearCLIPSegmentor``: training-free open-vocabulary semantic segmentation."""

import contextlib
import logging
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..checks import (
    check_area_threshold,
    check_class_chunking,
    check_dense_only_options,
    check_input_format,
    check_pixel_normalisation,
    check_precision,
    check_prob_threshold,
    check_sliding_window,
    check_templates,
    check_whole_image_upsample,
    check_text_batch_size,
    check_vocabulary_matches_dataset,
    check_window_padding,
)
from ..constants import PROB_THRESHOLD_FROM_DATASET
from ..data.vocabulary import Vocabulary, load_vocabulary_file, vocabulary_from_names
from ..utils.errors import ClearCLIPError
from .clip.loading import build_clip_model_from_config
from .clip.precision import with_precision
from .clip.dense_encoder import DenseCLIPEncoder
from .methods import build_dense_encoder
from .inference.class_chunks import CONFIDENCE_KEY, LABELS_KEY, use_class_chunks
from .inference.per_pixel import SeparableLogits, separable_labels, separable_probabilities
from .refinement import build_refiner
from .inference.slide_inference import encode_whole_image, encode_windows, logits_to_probabilities, windows_by_image
from .clip.text_cache import TextEmbeddingCache
from .clip.text_classifier import build_text_classifier

logger = logging.getLogger(__name__)


def vocabulary_of_dataset(dataset_name: str) -> Vocabulary:
    """The vocabulary of a registered dataset: its ``clearclip_classes`` (the reference class list,
    set by ClearCLIP's registrations), else its ``stuff_classes``; commas separate synonyms."""
    meta = MetadataCatalog.get(dataset_name)
    key = "clearclip_classes" if meta.get("clearclip_classes") else "stuff_classes"
    classes = meta.get(key)
    if not classes:
        raise ClearCLIPError(
            f"dataset {dataset_name!r} has no stuff_classes in its metadata; set MODEL.CLEARCLIP.CLASS_NAMES_FILE"
        )
    return vocabulary_from_names(classes, source=f"{key} of {dataset_name}")


def prob_threshold_of_dataset(dataset_name: str) -> float:
    """The background threshold recorded for a dataset (``clearclip_prob_threshold``), else 0."""
    return float(MetadataCatalog.get(dataset_name).get("clearclip_prob_threshold", 0.0))


def prob_threshold_from_config(cfg) -> Optional[float]:
    """``PROB_THRESHOLD`` if given; None for "the test dataset's" (``PROB_THRESHOLD_FROM_DATASET``)."""
    threshold = float(cfg.MODEL.CLEARCLIP.PROB_THRESHOLD)
    check_prob_threshold(threshold)
    return None if threshold == PROB_THRESHOLD_FROM_DATASET else threshold


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
    included, see :func:`.inference.per_pixel.separable_probabilities`). When queries x the larger
    of the output and the input image (height x width, or the resized image's pixels) passes
    ``max_dense_elements``, the classes go through in chunks (:mod:`.inference.class_chunks`) and the
    output is ``{"sem_seg_labels": Tensor[height, width] int64, "sem_seg_confidence":
    Tensor[height, width]}`` instead: the same argmax and the highest class probability.
    Inside :meth:`labels_only` (the evaluation loop) every output has that form, which skips
    the [K, H, W] map (:mod:`.inference.per_pixel`).
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
        prob_threshold: Optional[float],
        slide_crop: int,
        slide_stride: int,
        window_batch: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "RGB",
        text_batch_size: int = 256,
        fixed_vocabulary: bool = False,
        class_chunk: int = 32,
        max_dense_elements: int = 2**28,
        text_cache: Optional[TextEmbeddingCache] = None,
        precision: str = "fp32",
        dataset_name: Optional[str] = None,
        refiner: Optional[nn.Module] = None,
        window_padding: str = "centred",
        area_threshold: float = 0.0,
        renormalize: bool = False,
        whole_image_upsample: str = "direct",
    ):
        """
        Args:
            clip_model: the open_clip model; its text tower embeds the class queries.
            encoder: dense features of the (decomposed) image tower of ``clip_model``.
            vocabulary: classes to segment; can be changed with :meth:`set_vocabulary`.
            prompt_templates: templates with ``{}`` for the class name.
            logit_scale: multiplies the cosine similarities before the softmax.
            prob_threshold: background threshold on the highest class probability; None = each
                dataset's ``clearclip_prob_threshold`` (see :meth:`use_dataset`), 0 until one is used.
            slide_crop, slide_stride: sliding window size and step in pixels; crop 0 = whole image.
            window_batch: windows per encoder batch.
            pixel_mean, pixel_std: per channel, in ``input_format`` order, 0-255 scale.
            input_format: "RGB" or "BGR", the channel order of ``image``.
            fixed_vocabulary: keep ``vocabulary`` when evaluating datasets with other classes.
            class_chunk: queries per chunk when the output is too large for ``sem_seg``.
            max_dense_elements: largest queries x max(output pixels, input image pixels) computed
                on the plain path (:func:`~.inference.class_chunks.dense_elements`).
            text_cache: disk cache of the text embeddings (None = memory only).
            precision: image-encoder precision, "fp32", "fp16" (CUDA) or "bf16" (:mod:`.clip.precision`).
            dataset_name: the dataset evaluated first, whose threshold applies if ``prob_threshold`` is None.
            refiner: ``refiner(probs [K, H, W], image) -> [K, H, W]`` applied before the
                background threshold (``MODEL.CLEARCLIP.REFINE``, see :mod:`.refinement`).
            window_padding: "centred" (pad windows to the encoder's ``window_multiple``) or
                "none" (encode them unpadded), see :mod:`.slide_inference`.
            area_threshold, renormalize: SCLIP's area threshold (0 = off) and NACLIP's
                renormalisation, see :func:`~.inference.slide_inference.logits_to_probabilities`.
            whole_image_upsample: "direct" or "via_input" (whole-image mode, see
                :meth:`~.inference.per_pixel.SeparableLogits.from_patch_grid`).
        """
        super().__init__()
        check_templates(prompt_templates)
        check_text_batch_size(text_batch_size)
        check_input_format(input_format)
        check_pixel_normalisation(pixel_mean, pixel_std)
        check_class_chunking(class_chunk, max_dense_elements)
        check_sliding_window(slide_crop, slide_stride, window_batch)
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.prompt_templates = list(prompt_templates)
        self.logit_scale = float(logit_scale)
        self.threshold_from_dataset = prob_threshold is None
        self.prob_threshold = 0.0 if prob_threshold is None else float(prob_threshold)
        self.slide_crop = int(slide_crop)
        self.slide_stride = int(slide_stride)
        self.window_batch = int(window_batch)
        self.input_format = input_format
        self.text_batch_size = int(text_batch_size)
        self.fixed_vocabulary = fixed_vocabulary
        self.class_chunk = int(class_chunk)
        self.max_dense_elements = int(max_dense_elements)
        check_precision(precision)
        self.text_cache = text_cache
        self.precision = precision
        self.refiner = refiner
        check_window_padding(window_padding)
        self.window_padding = window_padding
        check_area_threshold(area_threshold)
        check_whole_image_upsample(whole_image_upsample)
        self.area_threshold = float(area_threshold)
        self.renormalize = bool(renormalize)
        self.whole_image_upsample = whole_image_upsample
        rgb = (lambda v: list(v)[::-1]) if input_format == "BGR" else list
        self.register_buffer("pixel_mean", torch.tensor(rgb(pixel_mean), dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(rgb(pixel_std), dtype=torch.float32).view(3, 1, 1), False)
        self.return_labels = False  # see labels_only()
        self.vocabulary: Optional[Vocabulary] = None
        self._text_embeddings: Dict[tuple, torch.Tensor] = {}
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        if self.threshold_from_dataset and dataset_name:
            self.prob_threshold = prob_threshold_of_dataset(dataset_name)

    @classmethod
    def from_config(cls, cfg):
        cc = cfg.MODEL.CLEARCLIP
        clip_model, tokenizer, arch = build_clip_model_from_config(cfg)
        return {
            "clip_model": clip_model,
            "tokenizer": tokenizer,
            "encoder": build_dense_encoder(cfg, clip_model),
            "vocabulary": vocabulary_from_config(cfg),
            "prompt_templates": list(cc.PROMPT_TEMPLATES),
            "logit_scale": cc.LOGIT_SCALE,
            "prob_threshold": prob_threshold_from_config(cfg),
            "slide_crop": cc.SLIDE_CROP,
            "slide_stride": cc.SLIDE_STRIDE,
            "window_batch": cc.WINDOW_BATCH,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "text_batch_size": cc.TEXT_BATCH_SIZE,
            "fixed_vocabulary": bool(cc.CLASS_NAMES_FILE),
            "class_chunk": cc.CLASS_CHUNK,
            "max_dense_elements": cc.MAX_DENSE_ELEMENTS,
            "text_cache": TextEmbeddingCache.from_config(cfg, arch),
            "precision": cc.PRECISION,
            "dataset_name": cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None,
            "refiner": build_refiner(cfg),
            "window_padding": cc.WINDOW_PADDING,
            "area_threshold": cc.AREA_THRESHOLD,
            "renormalize": cc.RENORMALIZE,
            "whole_image_upsample": cc.WHOLE_IMAGE_UPSAMPLE,
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
        """Switch to a dataset's classes, unless a fixed ``CLASS_NAMES_FILE`` was configured (which
        must then have as many classes as the dataset)."""
        if not self.fixed_vocabulary:
            self.set_vocabulary(vocabulary_of_dataset(dataset_name))
            return
        num_classes = len(MetadataCatalog.get(dataset_name).get("stuff_classes") or [])
        check_vocabulary_matches_dataset(len(self.vocabulary), dataset_name, num_classes, "MODEL.CLEARCLIP.CLASS_NAMES_FILE")

    def use_dataset(self, dataset_name: str) -> None:
        """Switch to a dataset's classes (see :meth:`use_dataset_vocabulary`) and, unless
        ``PROB_THRESHOLD`` was given, to its background threshold."""
        self.use_dataset_vocabulary(dataset_name)
        if self.threshold_from_dataset:
            self.prob_threshold = prob_threshold_of_dataset(dataset_name)

    def text_embeddings(self) -> torch.Tensor:
        """[Q, D] unit text embeddings of the current vocabulary's queries."""
        if self.vocabulary is None:
            raise ClearCLIPError(
                "no vocabulary: set MODEL.CLEARCLIP.CLASS_NAMES_FILE or DATASETS.TEST, or call set_vocabulary()"
            )
        key = (tuple(self.vocabulary.queries), str(self.device))
        if key not in self._text_embeddings:
            queries = self.vocabulary.queries
            if self.text_cache is not None:
                embeddings = self.text_cache.get_or_build(self.prompt_templates, queries, self.embed_queries)
            else:
                embeddings = self.embed_queries()
            self._text_embeddings[key] = embeddings.to(self.device)
        return self._text_embeddings[key]

    def embed_queries(self) -> torch.Tensor:
        """Run the text tower: [Q, D] unit embeddings of the current vocabulary's queries."""
        queries = self.vocabulary.queries
        logger.info(f"Embedding {len(queries)} class queries x {len(self.prompt_templates)} prompt templates")
        return build_text_classifier(self.clip_model, self.tokenizer, queries, self.prompt_templates, self.text_batch_size)

    # ----------------------------------------------------------------- inference
    @contextlib.contextmanager
    def labels_only(self):
        """Within the block, outputs are ``{"sem_seg_labels", "sem_seg_confidence"}`` [H, W]
        (the argmax of ``sem_seg`` and the highest class probability), computed without the
        [K, H, W] probabilities: what an evaluator needs, at a fraction of the per-pixel work."""
        before, self.return_labels = self.return_labels, True
        try:
            yield self
        finally:
            self.return_labels = before

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

    def inference(
        self,
        batched_inputs: List[Dict],
        encode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        window_batch: Optional[int] = None,
    ) -> List[Dict[str, torch.Tensor]]:
        """Predictions for a batch; ``encode`` and ``window_batch`` as in :meth:`encode_images`."""
        text = self.text_embeddings()
        images = [self.preprocess_image(x["image"]) for x in batched_inputs]
        out_sizes = [(int(x.get("height", img.shape[-2])), int(x.get("width", img.shape[-1]))) for x, img in zip(batched_inputs, images)]
        query_to_class = torch.as_tensor(self.vocabulary.query_to_class, device=self.device)
        return [
            self.predict_image(logits, text, size, query_to_class, x["image"])
            for logits, size, x in zip(self.encode_images(images, encode, window_batch, text), out_sizes, batched_inputs)
        ]

    def encode_images(
        self,
        images: List[torch.Tensor],
        encode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        window_batch: Optional[int] = None,
        text: Optional[torch.Tensor] = None,
    ) -> List[SeparableLogits]:
        """Run the image encoder once; per image, the averaged cosine similarities with any [C, D]
        text embeddings (:class:`~.inference.per_pixel.SeparableLogits`; called, it gives the
        image's [C, h, w] map at the resized image, or the patch grid when ``slide_crop`` is 0).

        ``encode``: images [B, 3, h, w] -> patch features [B, N, D], by default ``self.encoder``
        at ``PRECISION``; ``window_batch``: windows per ``encode`` call, by default
        ``WINDOW_BATCH``. Other values serve comparisons (``engine/benchmark.py``). ``text``
        [Q, D], the whole vocabulary's embeddings, goes to encoders that use it (``uses_text``).
        """
        patch = self.encoder.patch_size
        if encode is None:
            forward = partial(self.encoder, text_embeddings=text) if self.encoder.uses_text else self.encoder
            encode = with_precision(forward, self.device, self.precision)
        window_batch = window_batch or self.window_batch
        if self.slide_crop > 0:
            windows = encode_windows(
                images, encode, patch, self.slide_crop, self.slide_stride, window_batch,
                pad=self.window_padding == "centred", window_multiple=self.encoder.window_multiple,
            )
            return [
                SeparableLogits.from_windows(image_windows, tuple(img.shape[-2:]))
                for image_windows, img in zip(windows_by_image(windows, len(images)), images)
            ]
        return [
            SeparableLogits.from_patch_grid(
                *encode_whole_image(img, encode, patch),
                input_size=tuple(img.shape[-2:]) if self.whole_image_upsample == "via_input" else None,
            )
            for img in images
        ]

    def predict_image(
        self,
        logits: SeparableLogits,
        text: torch.Tensor,
        out_size: Tuple[int, int],
        query_to_class: torch.Tensor,
        image: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """``{"sem_seg": [K, H, W]}`` probabilities, or the labels when that is too large or
        only they are wanted (:meth:`labels_only`).

        ``image`` is the input's [3, h, w] uint8 image, which the refiner (if any) looks at.
        """
        dense = not use_class_chunks(len(text), out_size, tuple(image.shape[-2:]), self.max_dense_elements)
        refine = partial(self.refiner, image=image) if self.refiner is not None else None
        if dense and (refine is not None or self.area_threshold > 0 or not self.return_labels):
            probs = self.dense_probabilities(logits, text, out_size, query_to_class, refine)
            if not self.return_labels:
                return {"sem_seg": probs}
            confidence, labels = probs.max(dim=0)
            return {LABELS_KEY: labels, CONFIDENCE_KEY: confidence}
        check_dense_only_options(refine is not None, self.area_threshold, len(text), out_size, self.max_dense_elements)
        # RENORMALIZE leaves the argmax (and the threshold, decided before it) unchanged, so the
        # labels are exact; the confidence is the highest probability before it.
        chunk = len(text) if dense else self.class_chunk
        labels, confidence = separable_labels(
            logits, text, out_size, self.logit_scale, query_to_class, self.prob_threshold, chunk
        )
        return {LABELS_KEY: labels, CONFIDENCE_KEY: confidence}

    def dense_probabilities(
        self,
        logits: SeparableLogits,
        text: torch.Tensor,
        out_size: Tuple[int, int],
        query_to_class: torch.Tensor,
        refine: Optional[Callable[[torch.Tensor], torch.Tensor]],
    ) -> torch.Tensor:
        """[K, H, W] probabilities: fused (:func:`.inference.per_pixel.separable_probabilities`),
        except with a refiner of the logits (``REFINE pamr``), which needs the whole [Q, H, W]
        cosines first (:func:`~.inference.slide_inference.logits_to_probabilities`)."""
        options = dict(area_threshold=self.area_threshold, renormalize=self.renormalize)
        if refine is not None and self.refiner.refines == "logits":
            return logits_to_probabilities(
                logits(text), out_size, self.logit_scale, query_to_class, len(self.vocabulary), self.prob_threshold,
                refine_logits=refine, **options,
            )
        return separable_probabilities(
            logits, text, out_size, self.logit_scale, query_to_class, len(self.vocabulary), self.prob_threshold,
            refine, **options,
        )
