"""The worker runtime, imported as `ledger.worker` (this folder is ledger/worker in the package)."""

if __name__ != "ledger.worker":
    # Imported as a top-level `worker` it would be a second copy of every module
    # (and of the registry its handlers see): refuse, and say the one name.
    raise ImportError(f"import the worker as ledger.worker, not {__name__}")
