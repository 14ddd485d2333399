"""The serving contract: what a deployed model is and how its input is decoded.

ONNX metadata (``modelmeta``), image decoding to model pixels (``imageio``) and registry model
URIs (``model_uri``). Torch-free; the only part of ``adapt`` that ``services/`` imports.
"""
