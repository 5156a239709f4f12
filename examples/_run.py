"""Shared start-up for the example services (logging, env)."""
from __future__ import annotations

import logging
import os

from gateway_sdk import Responder


def serve(svc: Responder) -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format=f"%(asctime)s {svc.name} %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    svc.run()
