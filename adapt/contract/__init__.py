"""The serving contract: what a deployed model is, how its input is decoded and how it is run.

ONNX metadata (``modelmeta``), image decoding to model pixels (``imageio``), the one ONNX runner
(``runtime``), file digests (``digest``) and registry model URIs (``model_uri``). Torch-free; the
only part of ``adapt`` that ``services/`` imports.
"""
