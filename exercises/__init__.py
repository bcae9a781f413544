"""Classroom exercises: fill in a stub, then check it with `python -m exercises <name>` (see __main__.py)."""
