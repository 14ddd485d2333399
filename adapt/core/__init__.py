"""The model library: backbones, image encoders, the one classifier contract, features, export.

Depends on torch/open_clip/timm and ``adapt.contract``; knows nothing of Lightning, MLflow or
the pipelines.
"""
