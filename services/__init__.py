"""The gRPC inspection service (``adapt serve``) and its factory client (``adapt classify``).

Depends only on the exported classifier (an ONNX file with its metadata, see
``adapt.modelmeta``) and ``adapt.imageio``: never on torch, Lightning or open_clip; MLflow is
imported lazily, only to resolve ``models:/`` URIs.
"""
