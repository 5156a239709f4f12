"""Docs generated from the source stay in step with it."""
from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_architecture_svg_is_what_docs_architecture_py_draws() -> None:
    render = runpy.run_path(str(ROOT / "docs" / "architecture.py"))["render"]
    committed = (ROOT / "docs" / "architecture.svg").read_text()
    assert committed == render(), "docs/architecture.svg is stale: run python docs/architecture.py"


def test_readme_shows_the_diagram_and_names_only_modules_that_exist() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    assert "(docs/architecture.svg)" in readme
    for path in set(re.findall(r"`(gateway/[\w/]+\.py)`", readme)):
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"
