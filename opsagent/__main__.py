"""`python -m opsagent` is the same as the `opsagent` console script."""

from __future__ import annotations

import sys

from opsagent.cli import main

sys.exit(main())
