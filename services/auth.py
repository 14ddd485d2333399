"""Transport security and bearer-token authentication of the inspection server.

- TLS: ``--tls-cert`` + ``--tls-key``; with ``--tls-ca`` the server also requires and verifies
  client certificates (mTLS).
- Tokens: ``--token-file`` (one token per line, ``#`` comments); every call must carry
  ``authorization: Bearer <token>``, except ``grpc.health.v1.Health``, which stays open so
  load balancers and container health checks can probe without a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from pathlib import Path

import grpc

logger = logging.getLogger(__name__)

OPEN_SERVICES = ("/grpc.health.v1.Health/",)  # method prefixes that need no token


def read_tokens(path: str | Path) -> list[str]:
    """Tokens of a token file: one per line; blank lines and ``#`` comments ignored."""
    path = Path(path).expanduser()
    tokens = []
    for line in path.read_text().splitlines():
        token = line.split("#", 1)[0].strip()
        if token:
            tokens.append(token)
    if not tokens:
        raise ValueError(f"{path}: no tokens (one per line, '#' starts a comment)")
    return tokens


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuse calls without a valid ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, tokens: Iterable[str], open_prefixes: tuple[str, ...] = OPEN_SERVICES):
        self._digests = [_digest(t) for t in tokens]
        if not self._digests:
            raise ValueError("at least one token is needed")
        self._open = open_prefixes

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(self._open):
            return continuation(handler_call_details)
        header = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if self._valid(header):
            return continuation(handler_call_details)
        reason = "missing bearer token" if not header else "invalid bearer token"
        logger.info("unauthenticated call to %s: %s", method, reason)
        return _refusal(continuation(handler_call_details), reason)

    def accepts(self, header: str) -> bool:
        """Whether an ``authorization`` header value carries one of the tokens (the Ray app checks with it)."""
        return self._valid(header)

    def _valid(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        offered = _digest(token.strip())
        # compare against every token, so timing does not tell which (or whether one) matched
        return any([hmac.compare_digest(offered, known) for known in self._digests])


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _refusal(handler: grpc.RpcMethodHandler | None, reason: str) -> grpc.RpcMethodHandler | None:
    """A handler of the same kind as ``handler`` that aborts with UNAUTHENTICATED."""
    if handler is None:  # unknown method: let grpc answer UNIMPLEMENTED
        return None

    def abort(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        abort, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS credentials of the server; with ``client_ca``, client certificates are required (mTLS)."""
    pair = (Path(key).expanduser().read_bytes(), Path(cert).expanduser().read_bytes())
    ca = Path(client_ca).expanduser().read_bytes() if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)
