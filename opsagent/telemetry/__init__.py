"""What the agent says about itself: Prometheus exposition, structured logs, Sentry."""
