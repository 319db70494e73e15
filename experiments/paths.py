"""Where the checkout's entry point and config tree lie: the harness runs from a checkout."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
MAIN = REPO / "main.py"
