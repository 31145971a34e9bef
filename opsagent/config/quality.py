"""Config of alert quality (SPEC §9.4): error-budget objectives and maintenance windows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opsagent.config.fields import Duration, Ratio, TargetName


class Model(BaseModel):
    """Strict like every section (``config.models.Model``, which imports this module): typos are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SloPolicy(Model):
    """An availability objective for an error_rate target: ``ErrorBudgetBurn`` (SPEC §9.4)."""

    objective: Ratio
    period: Duration = 30 * 86400.0
    min_events: Annotated[int, Field(ge=1)] = 20  # fewer requests in a window: burn rates are not judged
    low_volume_errors: Annotated[int, Field(ge=1)] = 5  # errors in 1h that page a service below min_events
    # For testing and staging only: multiplies every burn-rate window (and the bucket width), e.g. 0.01.
    window_scale: Annotated[float, Field(gt=0, le=1)] = 1.0

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("objective must be between 0 and 100% exclusive, such as 99.9%")
        return value


class MaintenanceMatch(Model):
    """Which alerts a maintenance window holds: every given label must match."""

    target: TargetName | None = None
    check: str | None = None
    alertname: str | None = None

    @model_validator(mode="after")
    def _something(self) -> MaintenanceMatch:
        if self.target is None and self.check is None and self.alertname is None:
            raise ValueError("match needs at least one of target, check or alertname")
        return self


class MaintenanceWindow(Model):
    """A planned window in which the agent holds pages for the matching alerts (SPEC §9.4)."""

    match: MaintenanceMatch
    start: datetime
    end: datetime
    comment: str = ""

    @model_validator(mode="after")
    def _order(self) -> MaintenanceWindow:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end need a timezone, such as 2026-12-01T22:00:00Z")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self
