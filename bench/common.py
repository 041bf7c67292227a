"""What every `onlooker bench` shares: rows written as JSON lines, each with the run's header."""

from __future__ import annotations

import json


def write_rows(path: str | None, header: str, rows: list[dict]) -> None:
    """Write `rows` to `path` (if given) as JSON lines, each carrying the header (hardware, settings)."""
    if not path:
        return
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"header": header, **r}) + "\n")


class BenchError(Exception):
    """Bad input for a benchmark; the launcher prints one line and exits 2."""
