"""connscan: check connections and flow exports against C2 signatures and GeoIP."""
from connscan.errors import (
    CacheError,
    ConfigError,
    ConnscanError,
    GeoIPError,
    InputError,
    SignatureError,
)

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "ConfigError",
    "ConnscanError",
    "Engine",
    "GeoIPError",
    "GeoTable",
    "InputError",
    "LookupResult",
    "ParsedAddresses",
    "Signature",
    "SignatureError",
    "SignatureSet",
    "__version__",
    "parse_addresses",
]


def __getattr__(name):
    # Lazy imports keep `connscan --help` and worker start-up fast.
    if name in ("Signature", "SignatureSet"):
        from connscan import signatures

        return getattr(signatures, name)
    if name == "GeoTable":
        from connscan.geoip import GeoTable

        return GeoTable
    if name in ("Engine", "LookupResult", "ParsedAddresses", "parse_addresses"):
        from connscan import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'connscan' has no attribute {name!r}")
