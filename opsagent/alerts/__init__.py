"""Alarm catalogue, evaluation and alert state (pure logic, no I/O)."""
