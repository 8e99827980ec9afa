"""What Tollway forwards: the allow-list of (route, method) pairs, and the checks a request
passes before anything about it reaches an upstream.

Only the pairs in `ROUTES` are ever forwarded, with the operator's key. Anything else is
answered here, in the provider's error format, and never reaches an upstream:

- a known route with another method: 405 with ``allow`` (a tenant's ``DELETE
  /v1/models/ft:...`` would delete the operator's fine-tuned model);
- any other path under ``/v1/``: 404;
- a route whose provider has no upstream configured: 404 saying so (outcome
  ``no_upstream``, never a 500);
- a body whose ``Content-Encoding`` Tollway cannot decode: 415. aiohttp inflates a single
  ``gzip``, ``deflate``, ``br`` or ``zstd`` body before Tollway reads it, and the forwarded
  request drops the header (`tollway.proxy.gateway.forward`), so the upstream gets the
  plain bytes that were metered; any other coding (a list of codings, ``compress``...)
  would reach Tollway still encoded, so it is refused.

Kinds: ``metered`` routes are admitted (every limit), forwarded, metered and settled;
``counted`` routes (count_tokens) take one request from the RPM buckets and nothing else
(no tokens, no money); ``free`` routes (the model list) are forwarded unmetered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tollway.proxy.gateway.providers import ANTHROPIC, OPENAI, Problem

Kind = Literal["metered", "counted", "free"]


@dataclass(frozen=True, slots=True)
class Route:
    """One forwarded route: its aiohttp path, the methods forwarded, its provider (None:
    chosen by the ``anthropic-version`` header) and its kind."""

    path: str
    methods: frozenset[str]
    provider: str | None
    kind: Kind


POST, GET = frozenset({"POST"}), frozenset({"GET"})
ROUTES: tuple[Route, ...] = (
    Route("/v1/chat/completions", POST, OPENAI, "metered"),
    Route("/v1/completions", POST, OPENAI, "metered"),
    Route("/v1/embeddings", POST, OPENAI, "metered"),
    Route("/v1/responses", POST, OPENAI, "metered"),
    Route("/v1/messages", POST, ANTHROPIC, "metered"),
    Route("/v1/messages/count_tokens", POST, ANTHROPIC, "counted"),
    Route("/v1/models", GET, None, "free"),
    Route("/v1/models/{model_id}", GET, None, "free"),
)
BY_PATH: dict[str, Route] = {r.path: r for r in ROUTES}
# Paths of the client port that are not routes but must not fall into the /v1 catch-all.
UNKNOWN_ROUTE = "other"  # the metrics label of a path that is no route
DECODED = frozenset({"gzip", "deflate", "br", "zstd", "identity"})


def route_of(request: Any) -> Route | None:
    """The route a request matched (None: a path that is no route)."""
    info = request.match_info.route.resource
    return BY_PATH.get(info.canonical) if info is not None else None


def provider_of(route: Route | None, headers: Any) -> str:
    """The provider format of the answer: the route's, else by ``anthropic-version``."""
    if route is not None and route.provider is not None:
        return route.provider
    return ANTHROPIC if "anthropic-version" in headers else OPENAI


def gate(route: Route | None, method: str, headers: Any, upstreams: Any) -> Problem | None:
    """Why a request must be answered here and never forwarded (None: it may go on)."""
    if route is None:
        return Problem(404, "not_found", "Unknown URL: Tollway does not serve this path.")
    if method not in route.methods:
        allowed = ", ".join(sorted(route.methods))
        return Problem(405, "method", f"{method} is not allowed on {route.path}: use {allowed}.")
    provider = provider_of(route, headers)
    if provider not in upstreams:
        message = (
            f"This Tollway has no '{provider}' upstream configured, so {route.path} is not "
            "served here. Ask your administrator to configure it."
        )
        return Problem(404, "no_upstream", message)
    values = headers.getall("content-encoding", ())
    codings = [c.strip().lower() for v in values for c in v.split(",")]
    if len(codings) > 1 or (codings and codings[0] not in DECODED):
        message = (
            f"Content-Encoding {', '.join(codings)!r} is not supported: send the body "
            "uncompressed or with one of gzip, deflate, br, zstd."
        )
        return Problem(415, "encoding", message)
    return None


def allow_header(route: Route | None) -> dict[str, str]:
    return {"allow": ", ".join(sorted(route.methods))} if route is not None else {}
