# Day-to-day commands. `just --list` shows them. Tools come from .venv/bin.
# With DATABASE_URL unset, everything uses the embedded server in .ledger/.

export PATH := justfile_directory() + "/.venv/bin:" + env_var('PATH')

# List the recipes.
default:
    @just --list

# Run the worker (applies the schema if needed). Extra args go to `ledger worker`.
worker *ARGS:
    ledger worker {{ARGS}}

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
web *ARGS:
    gunicorn -c web/gunicorn_conf.py {{ARGS}} web.wsgi:app

# Workers SIGKILLed every 2 s, one PostgreSQL crash, an idle transaction: prints lost/stuck/duplicates.
chaos *ARGS:
    python -m tests.chaos {{ARGS}}

# Retention with a million finished jobs: sizes before/after a prune, its time, the present's speed.
retention *ARGS:
    python -m bench.retention {{ARGS}}

# The benchmark beside Procrastinate and PgQueuer (installs the bench extra). `just bench --quick` for ~2.5 min.
bench *ARGS:
    pip install -q -e '.[dev,bench]'
    python -m bench.run {{ARGS}}
