"""The value types every config section shares: durations, ratios, target names, URLs, the base model.

Kept apart from :mod:`opsagent.config.models` so section models in other
modules (:mod:`opsagent.config.quality`) use the same types without an import cycle.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, SecretStr

from opsagent import secrets
from opsagent.units import format_duration, parse_duration, parse_ratio

Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
Ratio = Annotated[float, BeforeValidator(parse_ratio)]
TargetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")]

_NAME_FORM = "letters, digits, '.', '_' or '-', at most 63 characters"


def _url_validator(schemes: tuple[str, ...], secret: bool = False) -> BeforeValidator:
    def check(value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(raw, str):
            raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme.lower() not in schemes or not rest.strip("/"):
            shown = "the value" if secret else repr(secrets.mask_url(raw))  # a secret URL is never echoed
            raise ValueError(
                f"{shown} is not a valid URL; expected one starting with "
                + " or ".join(s + "://" for s in schemes)
            )
        return value

    return BeforeValidator(check)


# Written out (not built by a function) so type checkers see real aliases.
PostgresDsn = Annotated[SecretStr, _url_validator(("postgresql", "postgres"), secret=True)]
RedisUrl = Annotated[SecretStr, _url_validator(("redis", "rediss", "unix"), secret=True)]
HttpUrl = Annotated[str, _url_validator(("http", "https"))]
SecretHttpUrl = Annotated[SecretStr, _url_validator(("http", "https"), secret=True)]
RepositoryUrl = Annotated[str, _url_validator(("file", "s3"))]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
AmqpUrl = Annotated[SecretStr, _url_validator(("amqp", "amqps"), secret=True)]
