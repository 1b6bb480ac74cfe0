"""Shared foundations for the other apps: base model, the service error type."""
