"""c2sync's benchmark harness: ``python -m benchmarks`` or ``python benchmarks/run.py``.

See benchmarks/README.md.
"""
