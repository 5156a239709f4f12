"""The core: the request lifecycle (:mod:`.calls`), the pending-reply table (:mod:`.pending`), reply-partition
ownership and reply-key minting (:mod:`.routing`), the per-worker runtime that holds them (:mod:`.runtime`).

It never imports the web layer: the web layer calls it, the reply reader (:mod:`gateway.kafka.replies`) resolves
its pending table.
"""
