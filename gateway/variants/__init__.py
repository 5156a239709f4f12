"""The variants beyond one request, one reply (docs/variants.md): their domain logic, below the web layer.

:mod:`.async_results` (accepted markers, the results tail and store, read barriers, deadlines),
:mod:`.streams` (reordering a stream's records, bounded output buffers, NDJSON/SSE encodings),
:mod:`.states` (entity tables fed by events tails, waiting for a state or a change),
:mod:`.runtime` (the per-worker ``Variants`` extension that starts and stops their tails).
"""
