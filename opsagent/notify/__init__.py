"""Alert delivery: one module per sink, the durable outbox and the per-sink worker."""
