"""Settings: built-in defaults, a TOML config file, and command-line flags (which win).

The config file holds the same settings as the flags, one top-level key each (the long
option name with ``_`` for ``-``), plus rule settings that have no flag (scores) and a
``[flows]`` table that is handed to ``connscan flows`` unchanged. Relative paths in the
file are relative to the file. See the README section "Configuration file".
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from connscan.errors import ConfigError
from connscan.rules import RuleConfig

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10 with the tomli backport
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

__all__ = ["Settings", "load_config_file", "parse_ports", "resolve_settings"]

LEVEL_NAMES = {"info": "Info", "notice": "Notice", "warning": "Warning", "alert": "Alert"}

# Keys that name files: resolved relative to the config file.
_PATH_KEYS = {"iocs", "allowlist", "geoip", "output", "stats"}
_LIST_KEYS = {"iocs", "allowlist", "relevant_countries", "allow_processes", "no_direct_internet"}
_STRING_KEYS = {"geoip", "format", "output", "stats", "tag", "fail_level"}
_NUMBER_KEYS = {"geoip_score", "geoip_score_inbound", "port_score", "direct_internet_score",
                "allow_process_score", "allowlist_score", "notice", "warning", "alert"}
_BOOL_KEYS = {"all_connections", "include_loopback", "builtin_suspicious_ports", "keep_special_ranges"}
_INT_KEYS = {"max_reasons"}
_TABLE_KEYS = {"suspicious_ports", "flows"}
KNOWN_KEYS = _LIST_KEYS | _STRING_KEYS | _NUMBER_KEYS | _BOOL_KEYS | _INT_KEYS | _TABLE_KEYS


@dataclass
class Settings:
    """Everything a run needs, after defaults < config file < flags."""

    rules: RuleConfig = field(default_factory=RuleConfig)
    iocs: list[str] = field(default_factory=list)
    allowlist: list[str] = field(default_factory=list)
    geoip: str | None = None  # None: the embedded DB-IP Country Lite
    format: str = "text"
    output: str | None = None  # None: stdout
    stats: str | None = None
    tag: str = "connscan"
    fail_level: str = "Alert"
    include_loopback: bool = False
    keep_special_ranges: bool = False  # match C2 entries that cover a whole special-purpose range
    flows: dict[str, Any] = field(default_factory=dict)  # [flows] table, for connscan flows
    config_path: str | None = None


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and type-check a TOML config file; raises ConfigError naming the file."""
    path = Path(path)
    if tomllib is None:
        raise ConfigError(f"{path}: reading TOML config files needs Python >= 3.11 or the tomli package")
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(KNOWN_KEYS))})")
    base = path.resolve().parent
    checked: dict[str, Any] = {}
    for key, value in data.items():
        checked[key] = _check(path, key, value)
        if key in _PATH_KEYS:
            checked[key] = _relative_to(base, checked[key])
    if "suspicious_ports" in checked:
        checked["suspicious_ports"] = parse_ports(checked["suspicious_ports"], f"{path}: suspicious_ports")
    return checked


def _check(path: Path, key: str, value: Any) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{path}: {key} must be {expected}, not {type(value).__name__} {value!r}")

    if key in _LIST_KEYS:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return value
    if key in _STRING_KEYS:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if key in _NUMBER_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if not isinstance(value, dict):
        raise bad("a table")
    return value


def _relative_to(base: Path, value):
    if isinstance(value, list):
        return [_relative_to(base, v) for v in value]
    if value in ("-",) or os.path.isabs(value):
        return value
    return str(base / os.path.expanduser(value))


def parse_ports(value, where: str = "--suspicious-ports") -> dict[int, float]:
    """``{port: score}`` from a TOML table ``{"4444" = 60}`` or text ``"4444=60,1234"``;
    a port without a score gets the configured port_score (None here)."""
    if isinstance(value, str):
        items = []
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            port, _, score = part.partition("=")
            items.append((port.strip(), score.strip() or None))
    else:
        items = list(value.items())
    ports: dict[int, float] = {}
    for port, score in items:
        try:
            number = int(port)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {port!r} is not a port number") from None
        if not 0 <= number <= 65535:
            raise ConfigError(f"{where}: port {number} is outside 0..65535")
        if score is None:
            ports[number] = None
            continue
        try:
            ports[number] = float(score)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: score {score!r} of port {number} is not a number") from None
    return ports


def resolve_settings(flags: dict[str, Any], config_file: dict[str, Any] | None = None,
                     config_path: str | None = None) -> Settings:
    """Defaults, then the config file, then the flags that were given (not None)."""
    merged: dict[str, Any] = dict(config_file or {})
    flag_ports = flags.get("suspicious_ports")
    for key, value in flags.items():
        if value is not None and key in KNOWN_KEYS and key != "suspicious_ports":
            merged[key] = value
    defaults = RuleConfig()
    rule_names = {f.name for f in fields(RuleConfig)}
    rule_values = {k: v for k, v in merged.items() if k in rule_names and k != "suspicious_ports"}
    for key in ("relevant_countries", "allow_processes", "no_direct_internet"):
        if key in rule_values:
            rule_values[key] = tuple(_split_commas(rule_values[key], upper=key == "relevant_countries"))
    port_score = float(merged.get("port_score", defaults.port_score))
    ports = dict(defaults.suspicious_ports) if merged.get("builtin_suspicious_ports", True) else {}
    for table in (merged.get("suspicious_ports"), flag_ports):
        for port, score in (table or {}).items():
            score = port_score if score is None else score
            if score == 0:
                ports.pop(port, None)  # a score of 0 switches a (built-in) port off
            else:
                ports[port] = score
    rules = defaults.updated(**rule_values, suspicious_ports=ports).validate()
    fmt = merged.get("format", "text")
    if fmt not in ("text", "jsonl"):
        raise ConfigError(f"format must be text or jsonl, not {fmt!r}")
    fail_level = str(merged.get("fail_level", "alert")).lower()
    if fail_level not in LEVEL_NAMES:
        raise ConfigError(f"fail_level must be one of {', '.join(LEVEL_NAMES)}, not {fail_level!r}")
    tag = merged.get("tag", "connscan")
    if not tag or any(ch.isspace() or ch == ":" for ch in tag):
        raise ConfigError(f"tag must be a non-empty word without spaces or ':', not {tag!r}")
    flows = merged.get("flows", {})
    return Settings(
        rules=rules,
        iocs=list(merged.get("iocs", [])),
        allowlist=list(merged.get("allowlist", [])),
        geoip=merged.get("geoip"),
        format=fmt,
        output=merged.get("output"),
        stats=merged.get("stats"),
        tag=tag,
        fail_level=LEVEL_NAMES[fail_level],
        include_loopback=bool(merged.get("include_loopback", False)),
        keep_special_ranges=bool(merged.get("keep_special_ranges", False)),
        flows=dict(flows),
        config_path=config_path,
    )


def _split_commas(values, upper: bool = False) -> list[str]:
    # "--relevant-countries KP,IR" and ["KP", "IR"] both work; so do repeated flags.
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if part:
                out.append(part.upper() if upper else part)
    return out
