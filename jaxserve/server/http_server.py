"""The uvicorn server around an app: connection timeouts, graceful drain, exit on engine death.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`), but a connection that never
completes its request headers (slowloris) is kept forever; `_HeaderTimeoutH11` closes it after
server.timeout_request_header_s. `ServingServer` refuses new requests on SIGTERM/SIGINT, drains
those in flight, and stops by itself when the engine thread has died, so `jaxserve serve` can
exit non-zero and a supervisor restart it, instead of living on as a server that answers 503.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from jaxserve.config import ServerConfig

logger = logging.getLogger(__name__)


def _header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    class _HeaderTimeoutH11(H11Protocol):
        """Closes a connection whose next request's headers are not complete after timeout_s."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
            self._header_timer = self.loop.call_later(timeout_s, self._check_headers, self.cycle)

        def _check_headers(self, cycle_then: Any) -> None:
            # A new request (a new cycle) means its headers arrived; a cycle still responding
            # (a long stream on a pipelined connection) is busy, not idle.
            waiting = self.cycle is cycle_then and (cycle_then is None or cycle_then.response_complete)
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return _HeaderTimeoutH11


def uvicorn_config(app: Any, server: ServerConfig, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn.Config for `app` with the timeouts of `server` (host and port too, unless given)."""
    kwargs.setdefault("host", server.host)
    kwargs.setdefault("port", server.port)
    return uvicorn.Config(app, timeout_keep_alive=server.timeout_keep_alive_s,
                          http=_header_timeout_protocol(server.timeout_request_header_s), **kwargs)


class ServingServer(uvicorn.Server):
    """uvicorn.Server that drains on SIGTERM/SIGINT and stops when the engine has died.

    Args:
        engine: an AsyncEngine or Router: stop_accepting(), num_in_flight and error.
        config: its uvicorn.Config.
    """

    def __init__(self, engine: Any, config: uvicorn.Config):
        super().__init__(config)
        self.engine = engine
        self.engine_failed = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            logger.info("%s: refusing new requests, draining %d in flight",
                        signal.Signals(sig).name, self.engine.num_in_flight)
        self.engine.stop_accepting()
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.engine.error is not None and not self.engine_failed:
            # Every request in flight has already been failed by the engine thread.
            logger.error("engine failed (%r): stopping the server", self.engine.error)
            self.engine_failed = True
        if self.engine_failed:
            return True
        return await super().on_tick(counter)
