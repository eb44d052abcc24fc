"""Example applications that use ledger, each tested by the project's own suite (tests/test_example_app.py)."""
