"""adapt: industrial few-shot adaptation of CLIP models.

Kept import-light on purpose: ``import adapt`` must not pull in torch, so that the serving
path and ``adapt --help`` start fast. Import submodules for the real work.
"""

__version__ = "0.1.0"
