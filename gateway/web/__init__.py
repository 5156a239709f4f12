"""Flask blueprints: the service proxy and the ops endpoints."""
