"""Where a drain's WAL goes: bytes per job by record type and relation, read with pg_waldump.

    python -m bench.wal ledger_tuned 20000      # any row of bench.harness.SYSTEMS
    python -m bench.wal pgqueuer_tuned 20000 15 # the 15 largest lines (default 12)

One drain of one worker process, as `just bench` runs it (harness.drain_filled).
The WAL of the window its "WAL B" column counts is decoded by pg_waldump; each
record's length without full-page images (what depends on the design, not
on when the last checkpoint was) is added to its (record type, relation).
The other databases' writes of the same moment count too, so run it on a
quiet server. Needs pg_waldump of the server's version (Debian's layout, else PATH) and
the right to read the server's data directory, so a local server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psycopg

from bench.harness import drain_filled, system
from ledger.db import database_url

_RECORD = re.compile(r"rmgr: (\w+)\s+len \(rec/tot\):\s+(\d+)/\s*\d+.*?desc: (\w+)")
_RELATION = re.compile(r"rel \d+/\d+/(\d+)")


def waldump(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """How to run pg_waldump on this server's WAL directory."""
    data = Path(str(conn.execute("SHOW data_directory").fetchone()[0]))  # type: ignore[index]
    version = conn.info.server_version // 10000
    beside = Path(f"/usr/lib/postgresql/{version}/bin/pg_waldump")  # Debian's layout: the server's own version
    found = str(beside) if beside.exists() else shutil.which("pg_waldump")
    if found is None:
        raise SystemExit(f"bench.wal: no pg_waldump for PostgreSQL {version} (apt: postgresql-{version})")
    return [found, "-p", str(data / "pg_wal")]


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "ledger_tuned"
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    peer = system(name)
    server = database_url()
    url = peer.fresh(server)
    peer.call(url, "fill", str(jobs))
    start, end = drain_filled(peer, server, url, jobs, 1)["wal_span"]
    with psycopg.connect(url, autocommit=True) as conn:
        dump = waldump(conn)
        rels = conn.execute("SELECT pg_relation_filenode(oid)::text, relname::text FROM pg_class").fetchall()
        names = {str(node): str(rel) for node, rel in rels}
    out = subprocess.run([*dump, "-s", str(start), "-e", str(end)], capture_output=True, text=True, check=False)
    if out.returncode != 0:  # an empty split would read as "no WAL"
        raise SystemExit(f"bench.wal: pg_waldump failed: {out.stderr.strip().splitlines()[-1:]}")
    size: Counter[tuple[str, str, str]] = Counter()
    count: Counter[tuple[str, str, str]] = Counter()
    for line in out.stdout.splitlines():
        if not (m := _RECORD.search(line)):
            continue
        rel = _RELATION.search(line)
        key = (m.group(1), m.group(3), names.get(rel.group(1), rel.group(1)) if rel else "-")
        size[key] += int(m.group(2))
        count[key] += 1
    print(f"{peer.name}: WAL without full-page images, {sum(size.values()) / jobs:,.0f} B a job ({jobs:,} jobs)")
    for key, b in size.most_common(top):
        print(f"  {b / jobs:7.1f} B  {count[key] / jobs:5.2f} records  {key[0]} {key[1]} {key[2]}")


if __name__ == "__main__":
    main()
