"""Prompt templates and class text embeddings for zero-shot style heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "an industrial inspection image of a {}.",
    "a grayscale image of a {}.",
    "a photo of the {}.",
)


def class_text(name: str, descriptions: dict[str, str] | None = None) -> str:
    """The words that stand for a class in prompts: its description if given, else its name."""
    if descriptions and descriptions.get(name):
        return descriptions[name]
    return name.replace("_", " ").replace("-", " ")


@torch.no_grad()
def text_class_embeddings(
    model, tokenizer, classes, descriptions=None, templates=DEFAULT_TEMPLATES, device="cpu"
) -> torch.Tensor:
    """``[C, D]`` L2-normalised class embeddings: the mean of the normalised template embeddings."""
    model = model.to(device)
    rows = []
    for name in classes:
        words = class_text(name, descriptions)
        tokens = tokenizer([t.format(words) for t in templates]).to(device)
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1).mean(dim=0)
        rows.append(F.normalize(emb, dim=-1))
    return torch.stack(rows).cpu()
