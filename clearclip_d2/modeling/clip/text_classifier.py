"""Prompt-ensembled text embeddings of the class queries (the zero-shot classifier)."""

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...checks import check_templates


# A progress bar from this many prompts on (847 classes x 80 templates take minutes on a CPU);
# small vocabularies, as in the tests, print nothing.
PROGRESS_MIN_PROMPTS = 2000


def fill_templates(templates: Sequence[str], name: str) -> list:
    """Prompts for one query: each template with ``{}`` replaced by ``name``."""
    return [template.replace("{}", name) for template in templates]


@torch.no_grad()
def build_text_classifier(
    clip_model: nn.Module,
    tokenizer: Callable,
    queries: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Embed every query with every template and average, as the reference does.

    Each prompt embedding is L2-normalised, the template average is L2-normalised again.

    Returns:
        [len(queries), D] float32 tensor on the model's device, unit rows.
    """
    check_templates(templates)
    device = next(clip_model.parameters()).device
    prompts = [prompt for name in queries for prompt in fill_templates(templates, name)]
    embeddings = []
    progress = tqdm(total=len(prompts), unit="prompt", desc="text embeddings", disable=len(prompts) < PROGRESS_MIN_PROMPTS)
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        embeddings.append(F.normalize(clip_model.encode_text(tokens).float(), dim=-1))
        progress.update(len(tokens))
    progress.close()
    per_prompt = torch.cat(embeddings).reshape(len(queries), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)
