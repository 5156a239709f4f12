"""The fault table for the README: every scenario of ``tests.support.scenarios`` under 50-client load, as markdown.

    .venv/bin/python bench/faults.py [scale second hup kill9 broker slow] [--clients 50]

Same as ``python -m tests.support.faults``; the per-phase details and diagnoses go to stderr, the table to stdout.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.faults import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
