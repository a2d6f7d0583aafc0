"""Finding: one reported connection, and Reason: one sub-score that made it a finding."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

REASON_KINDS = ("c2", "geoip", "port", "direct-internet", "allowlist")
LEVELS = ("Info", "Notice", "Warning", "Alert")  # ascending severity


@dataclass(frozen=True, slots=True)
class Reason:
    """One rule that fired for a connection, with its sub-score (negative for allowlists).

    ``signature``: the matching network (c2, allowlist), country code (geoip), port (port),
    or host network (direct-internet); ``source``: where the rule came from ("file:line").
    """

    kind: str
    score: float
    signature: str | None = None
    description: str | None = None
    source: str | None = None

    def text(self) -> str:
        """The human-readable REASON_n value of the text output."""
        if self.kind == "c2":
            return "Known C2 server address"
        if self.kind == "geoip":
            return f"Relevant remote region {self.signature}"
        if self.kind == "port":
            return f"Suspicious port {self.signature}" + (f" ({self.description})" if self.description else "")
        if self.kind == "direct-internet":
            return f"Direct Internet connection from no-direct-Internet network {self.signature}"
        return f"Allowlisted {self.description or self.signature}"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "score": self.score,
            "signature": self.signature,
            "description": self.description,
            "source": self.source,
        }


@dataclass(slots=True)
class Finding:
    """One connection (live socket or flow record) with its score, level and reasons.

    Unknown values are None. Flow findings add file/row/start; aggregated flow findings
    add count/first_seen/last_seen.
    """

    time: datetime
    hostname: str
    level: str
    message: str
    score: float
    proto: str
    lip: str
    lport: int | None
    rip: str
    rport: int | None
    direction: str
    country: str | None = None
    reasons: list[Reason] = field(default_factory=list)
    module: str = "ProcessConnections"
    pid: int | None = None
    name: str | None = None
    command: str | None = None
    exe: str | None = None
    user: str | None = None
    status: str | None = None
    file: str | None = None
    row: int | None = None
    start: datetime | None = None
    count: int | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None
