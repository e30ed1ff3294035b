"""Test helpers shared by the test suite (no pytest imports, usable from scripts).

The one exception is runner_jobs.py: a pytest plugin (tests/conftest.py loads it) holding the runner
tests' fixtures beside their helpers, which test modules import from it like any other helper."""
