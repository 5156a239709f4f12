"""The fault table for the README: every scenario of ``gateway.faults`` under 50-client load, as markdown.

    .venv/bin/python bench/faults.py [scale second hup kill9 broker slow] [--clients 50]

Same as ``python -m gateway.faults``; the per-phase details and diagnoses go to stderr, the table to stdout.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.faults import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
