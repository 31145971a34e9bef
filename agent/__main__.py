"""`python -m agent` is the same as the `opsagent` console script."""

from __future__ import annotations

import sys

from agent.cli import main

sys.exit(main())
