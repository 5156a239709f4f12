"""Benchmark: the gateway against the raw Kafka request-reply floor and the bare-HTTP ceiling (``./dev bench``).

See bench/README.md for what is measured, how, and the latest results.
"""
