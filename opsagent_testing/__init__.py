"""Private real servers for the test suite and the benchmarks (PostgreSQL, PgBouncer, Redis, Alertmanager, moto).

Not part of the shipped package: the wheel holds ``opsagent`` only. Kept outside ``tests/`` so that
``benchmarks/`` uses the same fixtures without importing a test module.
"""
