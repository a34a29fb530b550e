"""One settings object for the whole application.

Sources, later wins: built-in defaults < ``geolabel.toml`` (``$GEOLABEL_CONFIG``, else ``./geolabel.toml`` when it
exists) < environment variables ``GEOLABEL_*``.

========================== ============================ ===================================================
field                      env var                      default
========================== ============================ ===================================================
data_dir                   GEOLABEL_DATA_DIR            ``./.geolabel``
database_url               GEOLABEL_DATABASE_URL        ``sqlite:///<data_dir>/geolabel.db``
blob_url                   GEOLABEL_BLOB_URL            ``file://<data_dir>/blobs``
label_studio_url           GEOLABEL_LABEL_STUDIO_URL    ``http://127.0.0.1:8080``
label_studio_token_env     GEOLABEL_LABEL_STUDIO_TOKEN_ENV  ``LABEL_STUDIO_USER_TOKEN``
webhook_secret_env         GEOLABEL_WEBHOOK_SECRET_ENV  ``GEOLABEL_WEBHOOK_SECRET``
s3_endpoint_url            GEOLABEL_S3_ENDPOINT_URL     none (AWS)
imagery_roots              GEOLABEL_IMAGERY_ROOTS       none (``os.pathsep``-separated in the env var)
intake                     GEOLABEL_INTAKE              ``true``: ``geolabel cycle`` / the served label cycle pull
                                                        annotator queries from Label Studio's intake project
prelabel_format            GEOLABEL_PRELABEL_FORMAT     ``brush`` (RLE, exact) or ``polygon`` (editable vertices,
                                                        ``labeling.polygons``): how pre-labels are pushed
========================== ============================ ===================================================

Secrets are never settings values: the settings hold the *names* of the environment variables that carry them
(``label_studio_token_env``), and :meth:`Settings.label_studio_token` reads the value into a :class:`SecretStr`, whose
repr and str are masked. A password inside ``database_url`` is masked in ``repr`` and in :meth:`Settings.describe`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "GEOLABEL_"
CONFIG_FILE = "geolabel.toml"


class SettingsError(ValueError):
    """A settings file or variable is unreadable or holds a bad value."""


class SecretStr:
    """A secret value whose repr/str never shows it; call :meth:`get_secret_value` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = str(value)

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')" if self._value else "SecretStr('')"

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self):  # noqa: ANN204 - never pickle secrets by accident
        raise TypeError("SecretStr cannot be pickled")


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".geolabel")
    database_url: str = ""
    blob_url: str = ""
    label_studio_url: str = "http://127.0.0.1:8080"
    label_studio_token_env: str = "LABEL_STUDIO_USER_TOKEN"
    webhook_secret_env: str = "GEOLABEL_WEBHOOK_SECRET"
    s3_endpoint_url: str | None = None
    imagery_roots: tuple[Path, ...] = field(default_factory=tuple)
    intake: bool = True
    prelabel_format: str = "brush"
    source: str = "defaults"

    def __post_init__(self) -> None:
        data_dir = Path(self.data_dir).expanduser()
        object.__setattr__(self, "data_dir", data_dir.resolve())
        if not self.database_url:
            from storage.db import default_database_url

            object.__setattr__(self, "database_url", default_database_url(self.data_dir))
        if not self.blob_url:
            object.__setattr__(self, "blob_url", (self.data_dir / "blobs").as_uri())
        roots = self.imagery_roots
        if isinstance(roots, str | Path):
            roots = [p for p in str(roots).split(os.pathsep) if p]
        object.__setattr__(self, "imagery_roots", tuple(Path(p).expanduser().resolve() for p in roots))
        object.__setattr__(self, "intake", _as_bool("intake", self.intake))
        fmt = str(self.prelabel_format).strip().lower()
        if fmt not in ("brush", "polygon"):
            raise SettingsError(f"prelabel_format must be 'brush' or 'polygon', got {self.prelabel_format!r}")
        object.__setattr__(self, "prelabel_format", fmt)
        for name in ("label_studio_token_env", "webhook_secret_env"):
            v = getattr(self, name)
            if not v or not v.replace("_", "").isalnum():
                raise SettingsError(
                    f"{name} must be the NAME of an environment variable (letters, digits, _), not a value"
                )
        if not self.label_studio_url.startswith(("http://", "https://")):
            raise SettingsError(f"label_studio_url must be an http(s) URL, got {self.label_studio_url!r}")

    def __repr__(self) -> str:
        return (
            f"Settings(data_dir={str(self.data_dir)!r}, database_url={_mask_url(self.database_url)!r}, "
            f"blob_url={self.blob_url!r}, label_studio_url={self.label_studio_url!r}, "
            f"label_studio_token_env={self.label_studio_token_env!r}, webhook_secret_env={self.webhook_secret_env!r}, "
            f"s3_endpoint_url={self.s3_endpoint_url!r}, imagery_roots={[str(p) for p in self.imagery_roots]!r}, "
            f"intake={self.intake!r}, source={self.source!r})"
        )

    __str__ = __repr__

    def describe(self) -> dict[str, Any]:
        """A JSON-able view safe to print (no secret values, passwords masked)."""
        return {
            "data_dir": str(self.data_dir),
            "database_url": _mask_url(self.database_url),
            "blob_url": self.blob_url,
            "label_studio_url": self.label_studio_url,
            "label_studio_token_env": self.label_studio_token_env,
            "label_studio_token_set": bool(os.environ.get(self.label_studio_token_env)),
            "webhook_secret_env": self.webhook_secret_env,
            "s3_endpoint_url": self.s3_endpoint_url,
            "imagery_roots": [str(p) for p in self.imagery_roots],
            "intake": self.intake,
            "prelabel_format": self.prelabel_format,
            "source": self.source,
        }

    # --- secrets, read on demand ------------------------------------------------------------------------------------

    def label_studio_token(self, env: Mapping[str, str] | None = None) -> SecretStr | None:
        value = (os.environ if env is None else env).get(self.label_studio_token_env)
        return SecretStr(value) if value else None

    def webhook_secret(self, env: Mapping[str, str] | None = None) -> SecretStr | None:
        value = (os.environ if env is None else env).get(self.webhook_secret_env)
        return SecretStr(value) if value else None

    # --- loading ----------------------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, config_file: str | Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Defaults < TOML file < ``GEOLABEL_*`` env vars < keyword ``overrides``."""
        env = os.environ if env is None else env
        names = {f.name for f in fields(cls)} - {"source"}
        values: dict[str, Any] = {}
        sources = []
        path = Path(config_file) if config_file else None
        if path is None and env.get(ENV_PREFIX + "CONFIG"):
            path = Path(env[ENV_PREFIX + "CONFIG"])
            if not path.is_file():
                raise SettingsError(f"{ENV_PREFIX}CONFIG points to {path}, which is not a file")
        if path is None and Path(CONFIG_FILE).is_file():
            path = Path(CONFIG_FILE)
        if path is not None:
            values.update(_read_toml(path, names))
            sources.append(str(path))
        env_values = {n: env[ENV_PREFIX + n.upper()] for n in names if env.get(ENV_PREFIX + n.upper())}
        if env_values:
            sources.append("env")
        values.update(env_values)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(overrides) - names
        if unknown:
            raise SettingsError(f"unknown settings: {sorted(unknown)}; known: {sorted(names)}")
        return cls(**values, source="+".join(sources) or "defaults")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _as_bool(name: str, value: Any) -> bool:
    """A boolean setting from TOML (bool) or an env var (true/false, 1/0, yes/no, on/off; case-insensitive)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise SettingsError(f"{name} must be true or false (also 1/0, yes/no, on/off), got {value!r}")


def _read_toml(path: Path, names: set[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc}") from None
    table = data.get("geolabel", data)
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [geolabel] must be a table")
    for key in table:
        if key not in names and any(w in key.lower() for w in ("token", "password", "secret", "api_key")):
            raise SettingsError(f"{path}: {key!r}: do not put secrets in the settings file; name the env var instead")
    unknown = set(table) - names
    if unknown:
        raise SettingsError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(names)}")
    out = dict(table)
    if "data_dir" in out and not Path(out["data_dir"]).expanduser().is_absolute():
        out["data_dir"] = (path.parent / Path(out["data_dir"]).expanduser()).as_posix()
    return out
