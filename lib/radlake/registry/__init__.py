"""The model registry: resolving model URIs, registering runs, and promotion with aliases (never stages)."""
