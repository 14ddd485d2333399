"""The gRPC inspection service (``adapt serve``) and its factory client (``adapt classify``).

Depends only on the exported classifier (an ONNX file with its metadata, see
``adapt.contract.modelmeta``) and ``adapt.contract.imageio``: never on torch, Lightning or open_clip; MLflow is
imported lazily, only to resolve ``models:/`` URIs.
"""
