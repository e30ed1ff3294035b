"""Test helpers shared by the test suite (no pytest imports, usable from scripts)."""
