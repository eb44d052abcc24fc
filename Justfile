# Day-to-day commands. `just --list` shows them. Tools come from .venv/bin.
# With DATABASE_URL unset, everything uses the embedded server in .ledger/.

export PATH := justfile_directory() + "/.venv/bin:" + env_var('PATH')

# List the recipes.
default:
    @just --list

# Run the worker (applies the schema if needed). Extra args go to `ledger worker`.
# `exec`: the worker replaces the recipe's shell, so the SIGTERM that just forwards reaches it
# (with a shell between, the shell died and left the worker running). [continue]: after
# Ctrl-C, a worker that stopped cleanly makes just exit 0. just ends with 143 after a SIGTERM
# whatever the worker did (its documented rule, which [continue] does not lift for SIGTERM).
[continue]
worker *ARGS:
    exec ledger worker {{ARGS}}

# Run the whole test suite against a real PostgreSQL (DATABASE_URL, else embedded), in three processes (-n 0: one).
test *ARGS:
    pytest -n 3 {{ARGS}}

# ruff (lint + format check) and mypy.
lint:
    ruff check .
    ruff format --check .
    mypy

# Apply the schema to the database (idempotent).
migrate:
    ledger migrate

# Stop the embedded development server.
db-stop:
    ledger db stop

# Serve the web app under gunicorn on port 8000 (LEDGER_WEB_PORT to change).
[continue]
web *ARGS:
    exec gunicorn -c python:ledger.web.gunicorn_conf {{ARGS}} ledger.web.wsgi:app

# Workers SIGKILLed every 2 s, one PostgreSQL crash, an idle transaction, network partitions: prints lost/stuck/duplicates.
chaos *ARGS:
    python -m tests.chaos {{ARGS}}

# Retention with a million finished jobs: sizes before/after a prune, its time, the present's speed.
retention *ARGS:
    python -m bench.retention {{ARGS}}

# oban-py needs Python >= 3.12: bench.envs makes it bench/.venv-oban where one is found (else its rows are skipped).
# The benchmark beside Procrastinate, PgQueuer, oban-py and awa (installs the bench extra). `--quick`: a few minutes.
bench *ARGS:
    pip install -q -e '.[dev,bench]'
    -python -m bench.envs
    python -m bench.run {{ARGS}}

# Build the sdist and the wheel of jobledger into dist/.
build:
    python -m build

# Regenerate the sync store (ledger/store.py) from ledger/store_async.py; a test fails when they differ.
store:
    python scripts/async_to_sync.py
