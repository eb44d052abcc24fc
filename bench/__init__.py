"""The benchmark: ledger beside Procrastinate and PgQueuer on the same PostgreSQL (`just bench`)."""
