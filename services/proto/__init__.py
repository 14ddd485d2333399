"""Generated protobuf/gRPC stubs of ``protos/`` (do not edit; ``python -m services.generate_protos``)."""
