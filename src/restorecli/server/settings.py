"""What ``restorecli serve`` reads besides its flags, as one typed object: the environment, then a ``.env`` file,
a flag passed in winning over both (pydantic-settings' own order: arguments, then environment, then dotenv). An
empty value counts as unset, so an empty variable leaves the ``.env`` file's value in force.

``API_KEY`` is not among them: ``config.api_key_setting`` reads it from the environment and the file as they are,
since it must refuse an empty key (which pydantic-settings drops as unset) and name where a bad key was set.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ..errors import UsageError
from ..jobs.store import DEFAULT_QUEUE, QUEUE_ENV
from .envfile import read_dotenv

MAX_FILE_ENV = "MAX_FILE_SIZE_MB"
DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024
_ENV_FILE: ContextVar[Path | None] = ContextVar("restorecli_env_file", default=None)  # the .env of ``read``


def parse_megabytes(text: str, source: str) -> int:
    """``text`` megabytes as bytes; ``UsageError`` naming ``source`` where it is not a number over 0."""
    try:
        megabytes = float(text)
    except ValueError:
        raise UsageError(f"{source} '{text}' is not a number of megabytes") from None
    if not 0 < megabytes < float("inf"):
        raise UsageError(f"{source} {text}: must be more than 0")
    return int(megabytes * 1024 * 1024)


class ServeEnvironment(BaseSettings):
    """``MAX_FILE_SIZE_MB`` (a flag passes bytes) and ``RESTORECLI_QUEUE``, each named as it is set; see ``read``."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", env_ignore_empty=True, frozen=True)

    max_file_bytes: int = Field(DEFAULT_MAX_FILE_BYTES, validation_alias=MAX_FILE_ENV)
    queue: Path = Field(Path(DEFAULT_QUEUE), validation_alias=QUEUE_ENV)

    @field_validator("max_file_bytes", mode="before")
    @classmethod
    def _megabytes(cls, value: object) -> int:
        """Text (from the environment or the file) is megabytes, refused as ``UsageError`` naming the variable."""
        return value if isinstance(value, int) else parse_megabytes(str(value), MAX_FILE_ENV)

    @classmethod
    def read(cls, env_file: Path, **flags: Any) -> "ServeEnvironment":
        """The settings from ``flags`` (each under its variable's name), then the environment, then ``env_file``."""
        token = _ENV_FILE.set(env_file)
        try:
            return cls(**flags)
        finally:
            _ENV_FILE.reset(token)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No secrets folder; the .env file read by read_dotenv, as the key is (pydantic-settings' own reader skips
        # a malformed line, interpolates ${VAR} and fails on a byte that is not UTF-8)
        return init_settings, env_settings, EnvFileSource(settings_cls, _ENV_FILE.get())


class EnvFileSource(PydanticBaseSettingsSource):
    """The settings' values in a ``.env`` file (``read_dotenv``), by variable name; an empty one counts as unset."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | str | None):
        super().__init__(settings_cls)
        self.values = {k: v for k, v in read_dotenv(Path(path)).items() if v} if path else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(str(field.validation_alias)), field_name, False

    def __call__(self) -> dict[str, Any]:
        names = (str(field.validation_alias) for field in self.settings_cls.model_fields.values())
        return {name: self.values[name] for name in names if name in self.values}
