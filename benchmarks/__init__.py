"""Benchmarks of the library, run from the repository root as
`python -m benchmarks.<name>` (not part of the installed package)."""
