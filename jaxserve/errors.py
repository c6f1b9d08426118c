"""Errors shared by the engine, its thread wrapper and the servers; matched by class, never by name."""
from __future__ import annotations


class QueueFull(Exception):
    """The waiting queue is at scheduler.max_waiting; retry later (HTTP 429)."""


class RequestFailedError(RuntimeError):
    """One request failed inside the engine (its own values broke a step); the others go on."""
