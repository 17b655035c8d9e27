"""docs/api.md's flag table lists exactly the flags `nexuskv-server --help` prints."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVER = Path(os.environ.get("NEXUSKV_SERVER", REPO / "build" / "bin" / "nexuskv-server"))


def help_flags() -> set[str]:
    out = subprocess.run([str(SERVER), "--help"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    return set(re.findall(r"^    --(\w+) \(", text, re.M))


def documented_flags() -> set[str]:
    text = (REPO / "docs" / "api.md").read_text()
    table = text[text.index("## Server flags") :]
    table = table[: table.index("\n\n", table.index("|"))]
    names: set[str] = set()
    for row in table.splitlines():
        if row.startswith("| `--"):  # a row may name two flags: `--a` / `--b`
            names.update(re.findall(r"`--(\w+)`", row.split("|")[1]))
    return names


def test_the_flag_table_matches_help():
    assert SERVER.exists(), f"{SERVER} is not built (scripts/build.sh)"
    shown, documented = help_flags(), documented_flags()
    assert len(shown) > 20, "--help lists the server's flags"
    assert shown - documented == set(), "flags missing from docs/api.md's table"
    assert documented - shown == set(), "docs/api.md documents flags the server does not have"
