"""opsagent: operational monitoring and disaster-recovery sidecar."""

from __future__ import annotations

__version__ = "0.1.0"
