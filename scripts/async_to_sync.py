"""Generate the sync store (ledger/store.py) from the async one (ledger/store_async.py).

    python scripts/async_to_sync.py          # rewrite ledger/store.py
    python scripts/async_to_sync.py --check  # exit 1 if ledger/store.py is stale

psycopg keeps its async code as the source and generates the sync twin; this
does the same with plain token rewrites, which is enough because the async
store is written to allow them (no asyncio calls, only `async`/`await` and
the Async* psycopg names). The result goes through ruff format, as every
file of the project does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "ledger" / "store_async.py"
TARGET = ROOT / "ledger" / "store.py"

HEADER = '''"""The store, sync: generated from ledger/store_async.py by scripts/async_to_sync.py. Do not edit.

See ledger/store_async.py for what the store is and why every statement goes through it.
"""
'''

REWRITES = [
    (r"\bAsyncStore\b", "Store"),
    (r"\bpsycopg\.AsyncConnection\b", "psycopg.Connection"),
    (r"\bpsycopg\.AsyncCursor\b", "psycopg.Cursor"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"(?<![\w)\]])\(await ([^()]*(?:\([^()]*\))?)\)", r"\1"),  # (await f(x))["k"] -> f(x)["k"]
    (r"\bawait ", ""),
]


def generate() -> str:
    source = SOURCE.read_text(encoding="utf-8")
    body = source[source.index('"""', 3) + 3 :]  # the module docstring is replaced by HEADER
    for pattern, replacement in REWRITES:
        body = re.sub(pattern, replacement, body)
    ruff = Path(sys.executable).with_name("ruff")
    formatted = subprocess.run(
        [str(ruff) if ruff.exists() else "ruff", "format", "--stdin-filename", str(TARGET), "-"],
        input=HEADER + body,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return formatted.stdout


def main() -> int:
    text = generate()
    if "--check" in sys.argv:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python scripts/async_to_sync.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
