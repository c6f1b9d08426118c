"""Errors shared by the engine, its thread wrapper and the servers; matched by class, never by name."""
from __future__ import annotations


class QueueFull(Exception):
    """The waiting queue is at scheduler.max_waiting; retry later (HTTP 429)."""


class RequestFailedError(RuntimeError):
    """One request failed inside the engine (its own values broke a step); the others go on."""


class EngineDeadError(RuntimeError):
    """The engine thread has failed; no request can be served any more."""


class EngineNotReadyError(RuntimeError):
    """The engine is still warming up, or is shutting down."""


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full (scheduler.max_waiting); the client should retry later."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s
