"""Settings: read once from a YAML file (or the embedded defaults), validated, then passed down as values.

No global settings object: the node builds one Settings and hands the parts each stage needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_RULES_DIR = Path(__file__).resolve().parent.parent / "rules"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ae_title(value: str) -> str:
    value = value.strip()
    if not 0 < len(value) <= 16 or "\\" in value or not value.isascii():
        raise ValueError(f"AE title {value!r} must be 1 to 16 ASCII characters without backslash")
    return value


class NodeSettings(_Strict):
    ae_title: str = "SCINTNODE"
    bind_address: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)  # 0 picks a free port (tests)
    # calling AE titles allowed to send; None accepts any caller (logged as a warning at start)
    allowed_callers: list[str] | None = None
    max_pdu: int = Field(131072, ge=0)
    network_timeout_seconds: float = Field(60, gt=0)
    workers: int = Field(1, ge=1, le=16)  # concurrent inference jobs

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: _ae_title(v)))


class StorageSettings(_Strict):
    root: Path = Path("var")
    database_url: str | None = None  # default sqlite:///<root>/index.db
    min_free_bytes: int = Field(256 * 1024 * 1024, ge=0)  # refuse new instances below this (0xA700)
    retention_days: float = Field(30, gt=0)  # delete spooled inputs/outputs older than this once done


class CompletionSettings(_Strict):
    nm_object_complete_on_arrival: bool = True
    release_quiet_seconds: float = Field(2.0, ge=0)
    long_quiet_seconds: float = Field(120.0, gt=0)


class Destination(_Strict):
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = None  # defaults to the node's own AE title
    timeout_seconds: float = Field(30, gt=0)

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: _ae_title(v)))


class HttpSettings(_Strict):
    """The node's HTTP side: /healthz, /metrics (Prometheus) and the ops page."""

    enabled: bool = True
    bind_address: str = "127.0.0.1"  # the ops page can resubmit deliveries: keep it off the open network
    port: int = Field(8087, ge=0, le=65535)  # 0 picks a free port (tests)


class DispatchSettings(_Strict):
    base_delay_seconds: float = Field(5, gt=0)
    max_delay_seconds: float = Field(600, gt=0)
    poll_seconds: float = Field(0.5, gt=0)


class Settings(_Strict):
    node: NodeSettings = NodeSettings()
    storage: StorageSettings = StorageSettings()
    completion: CompletionSettings = CompletionSettings()
    dispatch: DispatchSettings = DispatchSettings()
    http: HttpSettings = HttpSettings()
    shadow_rules_dir: Path | None = None  # a candidate rule set evaluated beside the active one, acting on nothing
    destinations: dict[str, Destination] = Field(default_factory=dict)
    rules_dir: Path = DEFAULT_RULES_DIR
    job_timeout_seconds: float = Field(300, gt=0)

    @property
    def database_url(self) -> str:
        if self.storage.database_url:
            return self.storage.database_url
        return f"sqlite:///{(self.storage.root / 'index.db').resolve()}"

    def with_overrides(self, **changes: Any) -> Settings:
        return self.model_validate({**self.model_dump(), **changes})


def load_settings(path: Path | None) -> Settings:
    """Read a YAML config file; None gives the embedded defaults."""
    if path is None:
        return Settings()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = path.parent
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{path}: {problems}") from exc
    # relative paths in a config file are relative to that file, not to the working directory
    storage = settings.storage
    if not storage.root.is_absolute():
        storage = storage.model_copy(update={"root": (base / storage.root).resolve()})
    rules_dir = settings.rules_dir if settings.rules_dir.is_absolute() else (base / settings.rules_dir).resolve()
    if "rules_dir" not in raw:
        rules_dir = DEFAULT_RULES_DIR
    shadow = settings.shadow_rules_dir
    if shadow is not None and not shadow.is_absolute():
        shadow = (base / shadow).resolve()
    return settings.model_copy(update={"storage": storage, "rules_dir": rules_dir, "shadow_rules_dir": shadow})
