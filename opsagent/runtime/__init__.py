"""Schedules and runs the checks: the runner boundary, the result store, the agent (composition root)."""
