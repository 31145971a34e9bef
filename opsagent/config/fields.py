"""The value types every config section shares: durations, ratios, target names.

Kept apart from :mod:`opsagent.config.models` so section models in other
modules (:mod:`opsagent.config.quality`) use the same types without an import cycle.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, PlainSerializer

from opsagent.units import format_duration, parse_duration, parse_ratio

Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
Ratio = Annotated[float, BeforeValidator(parse_ratio)]
TargetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")]

