"""Probe a server's ``grpc.health.v1.Health``: exit 0 when SERVING, 1 otherwise.

For container health checks, e.g. ``HEALTHCHECK CMD python -m services.healthcheck localhost:50051``
(add ``--tls-ca ca.pem`` for a TLS server; health needs no token, and no client certificate
unless the server runs mTLS: then pass ``--tls-cert``/``--tls-key`` too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(
    target: str, *, service: str = "", timeout: float = 3.0, root_cert=None, client_cert=None, client_key=None
) -> str:
    """The health status name (``SERVING``, ``NOT_SERVING``, ...) or ``UNREACHABLE``."""
    if root_cert:
        credentials = grpc.ssl_channel_credentials(
            Path(root_cert).read_bytes(),
            Path(client_key).read_bytes() if client_key else None,
            Path(client_cert).read_bytes() if client_cert else None,
        )
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="localhost:50051", help="HOST:PORT (default: %(default)s)")
    parser.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: %(default)s)")
    parser.add_argument("--tls-ca", help="CA of the server certificate (TLS servers)")
    parser.add_argument("--tls-cert", help="client certificate (mTLS servers)")
    parser.add_argument("--tls-key", help="client key (mTLS servers)")
    args = parser.parse_args(argv)
    status = check(
        args.target,
        service=args.service,
        timeout=args.timeout,
        root_cert=args.tls_ca,
        client_cert=args.tls_cert,
        client_key=args.tls_key,
    )
    sys.stdout.write(f"{status}\n")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
