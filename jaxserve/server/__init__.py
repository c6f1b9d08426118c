"""The OpenAI-compatible HTTP server: app.py (routes), protocol.py (shapes), serving.py (work)."""
from jaxserve.server.app import create_app

__all__ = ["create_app"]
