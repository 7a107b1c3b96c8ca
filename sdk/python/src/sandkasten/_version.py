"""The SDK's version (read by the build backend too)."""

__version__ = "0.5.0"
