"""HTTP: /metrics /healthz /readyz /status / over a narrow view of the agent."""
