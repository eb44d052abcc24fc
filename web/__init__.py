"""The web app (falcon under gunicorn), imported as `ledger.web` (this folder is ledger/web in the package)."""

if __name__ != "ledger.web":
    # Imported as a top-level `web` it would be a second copy of every module: refuse, and say the one name.
    raise ImportError(f"import the web app as ledger.web, not {__name__}")
