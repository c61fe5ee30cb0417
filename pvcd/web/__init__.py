"""The web dashboard's files: its two HTML pages (`pages/`), its script, style and the vendored
front-end libraries (`static/`, Preact and htm: no build step). Served by `pvcd.api.dashboard`;
shipped in the package (pyproject.toml's package-data) so the dashboard works offline."""

from __future__ import annotations

from pathlib import Path

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"
PAGES_DIR = WEB_DIR / "pages"
