"""Loaded before any test module, so the repository root is importable (``tests.helpers``)."""
