"""pytest fixtures shared by the whole suite (loaded from tests/conftest.py)."""
