"""Settings: read once from a YAML file (or the embedded defaults), validated, then passed down as values.

No global settings object: the node builds one Settings and hands the parts each stage needs."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

DEFAULT_RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
_DEVICE_SETTING = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
DEFAULT_DEVICE = "auto"  # a CUDA GPU when torch sees one, else the CPU (models/device.py)


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ae_title(value: str) -> str:
    value = value.strip()
    if not 0 < len(value) <= 16 or "\\" in value or not value.isascii():
        raise ValueError(f"AE title {value!r} must be 1 to 16 ASCII characters without backslash")
    return value


def check_device_setting(value: str) -> str:
    """`auto`, `cpu`, `cuda` or `cuda:N`, checked without torch: a node whose rules use no network never imports it."""
    if not _DEVICE_SETTING.fullmatch(value):
        raise ValueError(f"a device must be auto, cpu, cuda or cuda:N (a GPU's index), not {value!r}")
    return value


class AllowedCaller(_Strict):
    """A calling AE title allowed to store, optionally only from an address or network (CIDR)."""

    ae_title: str
    address: str | None = None  # "10.0.0.7", "10.0.0.0/24", "fd00::/64"; None: from any address

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: _ae_title(v)))

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"address {value!r} is not an IP address or network (CIDR): {exc}") from exc


class TlsSettings(_Strict):
    """DICOM TLS (PS3.15 B.1) on the node's port; with require_client_cert only certified modalities connect."""

    certificate: Path  # PEM server certificate (chain)
    key: Path  # PEM private key of the certificate
    client_ca: Path | None = None  # PEM CA certificate(s) that client certificates must chain to
    require_client_cert: bool = True
    minimum_version: Literal["1.2", "1.3"] = "1.2"
    handshake_timeout_seconds: float = Field(10, gt=0)

    @model_validator(mode="after")
    def _client_ca_when_required(self) -> TlsSettings:
        if self.require_client_cert and self.client_ca is None:
            raise ValueError("require_client_cert needs client_ca, the CA that signs the modalities' certificates")
        return self


# a plain AE title, or {ae_title, address}; the discriminator keeps error messages to the form used
CallerEntry = Annotated[
    Annotated[str, Tag("title")] | Annotated[AllowedCaller, Tag("entry")],
    Discriminator(lambda value: "title" if isinstance(value, str) else "entry"),
]


class NodeSettings(_Strict):
    ae_title: str = "SCINTNODE"
    bind_address: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)  # 0 picks a free port (tests)
    # calling AE titles (plain, or with an address/CIDR) allowed to send; None accepts any caller (logged)
    allowed_callers: list[CallerEntry] | None = None
    # true: an association that calls another AE title than ae_title is rejected (a sender pointed at the wrong node)
    require_called_ae_title: bool = False
    max_pdu: int = Field(131072, ge=0)
    network_timeout_seconds: float = Field(60, gt=0)
    max_associations: int = Field(32, ge=1)  # more are rejected (transient, local limit exceeded)
    max_connections: int = Field(64, ge=1)  # TCP connections, associated or not; more are closed at once
    # how long a stop (SIGTERM, or the exit after a hung job) waits for associations in progress to end, with
    # new ones refused; a sender cut off keeps what was not acknowledged, but some modalities do not resend
    drain_seconds: float = Field(30, ge=0)
    tls: TlsSettings | None = None

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: _ae_title(v)))

    @field_validator("allowed_callers")
    @classmethod
    def _check_callers(cls, value: list[str | AllowedCaller] | None) -> list[str | AllowedCaller] | None:
        if value is None:
            return None
        return [_ae_title(item) if isinstance(item, str) else item for item in value]


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
    # how long a stop waits for the job in progress before the process exits (it is then re-run at next start)
    stop_timeout_seconds: float = Field(300, gt=0)
    # a job the node was running when it died this many times is failed at the next start, not run again: an
    # input that crashes the process (out of memory, a native fault) must not hold every later study back
    max_job_attempts: int = Field(3, ge=1)
    # a job still running after this long fails, and the process exits (status 75) for its supervisor to restart
    # it: a Python thread cannot be stopped, and one hung job would otherwise hold every later study
    job_time_limit_seconds: float = Field(900, gt=0)
    # load every network at start (a first job then pays no loading time); off for short-lived test nodes
    preload_networks: bool = False
    # where the networks run: auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N
    inference_device: str = DEFAULT_DEVICE

    _check_device = field_validator("inference_device")(classmethod(lambda cls, v: check_device_setting(v)))

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
    node = settings.node
    if node.tls is not None:
        files = {"certificate": node.tls.certificate, "key": node.tls.key, "client_ca": node.tls.client_ca}
        resolved = {k: v if v is None or v.is_absolute() else (base / v).resolve() for k, v in files.items()}
        node = node.model_copy(update={"tls": node.tls.model_copy(update=resolved)})
    return settings.model_copy(
        update={"node": node, "storage": storage, "rules_dir": rules_dir, "shadow_rules_dir": shadow}
    )
