"""Prompt templates and class text embeddings for zero-shot style heads."""

from __future__ import annotations

import torch

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
    """``[C, D]`` L2-normalised class embeddings: the mean of the normalised template embeddings
    (``open_clip.build_zero_shot_classifier``)."""
    import open_clip

    words = [class_text(name, descriptions) for name in classes]
    weights = open_clip.build_zero_shot_classifier(model.to(device), tokenizer, words, list(templates), device=device)
    return weights.T.float().cpu()
