"""The exceptions connscan raises; each message names the file (and line) at fault."""


class ConnscanError(Exception):
    """Base class of every error connscan reports."""


class SignatureError(ConnscanError, ValueError):
    """A signature file or line that cannot be read (message: ``file:line: reason``)."""


class GeoIPError(ConnscanError):
    """A GeoIP database that is missing, unreadable or corrupt."""


class CacheError(ConnscanError):
    """A compiled table file that fails validation (truncated, corrupt, wrong version)."""


class InputError(ConnscanError):
    """A flow input that cannot be read at all (unknown format, unreadable file)."""


class ConfigError(ConnscanError, ValueError):
    """A bad option or configuration file value."""
