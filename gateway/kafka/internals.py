"""The private attributes of kafka-python the gateway relies on, each reached here and nowhere else.

kafka-python offers no public way to do either; ``tests/test_library_internals.py`` fails if an upgrade removes
them, so the failure is a test, not a worker stuck in production.
"""
from __future__ import annotations

from typing import Any

# the rejoin nudge is the SDK's too: reached in one place, there
from gateway_sdk.clients import request_rejoin

__all__ = ["ORIGINAL_WRITE_TO_SOCK", "request_metadata_update", "request_rejoin", "write_first"]


def request_metadata_update(producer: Any) -> None:
    """Refresh the producer's metadata now rather than after ``metadata_max_age_ms``: after a broker outage,
    partitions may have vanished, and some brokers acknowledge writes to partitions that no longer exist
    (docs/broker.md)."""
    producer._metadata.request_update()  # noqa: SLF001 - no public equivalent


# kafka-python 3.0.12's KafkaTCPTransport._write_to_sock, as replaced by write_first(): the test compares the installed
# method's source with this, so an upgrade that changes it fails a test instead of being silently overridden.
ORIGINAL_WRITE_TO_SOCK = '''    async def _write_to_sock(self):
        try:
            while self._write_buffer:
                await self._net.wait_write(self._sock)
                total_bytes, err = self._sock_send()
                if err:
                    return self.abort(error=err)
                log.debug('%s: sent %d bytes', self, total_bytes)
                self.last_write = time.monotonic()
                if self._protocol and self._protocol._sensors:
                    self._protocol._sensors.bytes_sent.record(total_bytes)
        finally:
            self._writing = False
        if self._closed:
            self._close()
        elif not self._write:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
'''


def write_first() -> None:
    """Send a request before waiting for the socket to be writable, not after.

    kafka-python 3 writes every request (produce, fetch) from a task that first waits for writability: one more
    pass through its selector, and under gevent one more turn of the hub, in which every runnable greenlet (the
    HTTP requests of the moment) runs first. A connected socket is almost always writable, so this sends at once
    and waits only for what the kernel did not take, as asyncio's transports do. Same bookkeeping as the original
    (``ORIGINAL_WRITE_TO_SOCK``); the SSL transport inherits it and keeps its own ``_sock_send``. Idempotent."""
    import socket
    import time

    from kafka.net.transport import KafkaTCPTransport

    original = KafkaTCPTransport._write_to_sock  # noqa: SLF001
    if getattr(original, "gateway_original", None) is not None:
        return

    async def _write_to_sock(self: Any) -> None:
        try:
            while self._write_buffer:
                total_bytes, err = self._sock_send()
                if err:
                    return self.abort(error=err)
                self.last_write = time.monotonic()
                sensors = self._protocol and self._protocol._sensors  # noqa: SLF001 - as the original does
                if sensors:
                    sensors.bytes_sent.record(total_bytes)
                if self._write_buffer:                     # the kernel took part of it: wait, then the rest
                    await self._net.wait_write(self._sock)
        finally:
            self._writing = False
        if self._closed:
            self._close()
        elif not self._write:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return None

    _write_to_sock.gateway_original = original  # type: ignore[attr-defined]
    KafkaTCPTransport._write_to_sock = _write_to_sock  # type: ignore[method-assign]  # noqa: SLF001
