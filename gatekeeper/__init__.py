"""Gatekeeper: an opt-out and licensing gate for AI crawlers."""

__version__ = "0.1.0"
