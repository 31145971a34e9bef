"""Side-by-side benchmark of opsagent against the Go exporters (`make bench`)."""
