"""The Kafka side of a worker. Import only after gevent has patched (see gateway.runtime)."""
