"""PII policy: keyed hashes for PII traits and erased ids, IP truncation. Pure functions."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from typing import Any

DEFAULT_PII_TRAITS = ("email", "phone")
HASH_PREFIX = "hmac-sha256:"


def derive_key(secret: str, workspace_id: str, purpose: str) -> bytes:
    """A per-workspace, per-purpose key, so hashes of one workspace say nothing in another."""
    return hmac.new(secret.encode(), f"{purpose}:{workspace_id}".encode(), hashlib.sha256).digest()


def keyed_hash(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def normalize_pii(trait: str, value: str) -> str:
    """The form hashed, so `Ann@X.com ` and `ann@x.com` hash the same."""
    value = value.strip()
    if trait == "email":
        return value.lower()
    if trait == "phone":
        return "".join(ch for ch in value if ch.isdigit() or ch == "+")
    return value


def hash_pii_traits(
    traits: dict[str, Any], pii: tuple[str, ...] | list[str], policy: str, key: bytes
) -> dict[str, Any]:
    """Traits with PII fields hashed (``hash``), removed (``drop``) or left (``keep``)."""
    if policy == "keep" or not any(t in traits for t in pii):
        return traits
    out = dict(traits)
    for trait in pii:
        if trait not in out:
            continue
        value = out[trait]
        if policy == "drop" or not isinstance(value, str | int):
            del out[trait]
        elif not (isinstance(value, str) and value.startswith(HASH_PREFIX)):
            out[trait] = HASH_PREFIX + keyed_hash(key, normalize_pii(trait, str(value)))
    return out


def truncate_ip(ip: Any) -> str | None:
    """IPv4 without its last octet (``1.2.3.0``), IPv6 kept to its /48; None if not an IP."""
    if not isinstance(ip, str):
        return None
    return _truncate_ip(ip)


@functools.lru_cache(maxsize=8192)
def _truncate_ip(ip: str) -> str | None:
    # Cached: a visitor's IP repeats on every event of their session, and parsing it with
    # ipaddress costs more than the rest of the location policy.
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


def apply_location_policy(
    context: dict[str, Any] | None, location_allowed: bool, ip_policy: str
) -> dict[str, Any] | None:
    """Context with ``ip`` and ``location`` removed without location consent; otherwise
    the IP truncated (``truncate``), kept (``keep``) or removed (``drop``)."""
    if not context or ("ip" not in context and "location" not in context):
        return context
    out = dict(context)
    if not location_allowed:
        out.pop("ip", None)
        out.pop("location", None)
        return out
    if "ip" in out:
        if ip_policy == "drop":
            del out["ip"]
        elif ip_policy == "truncate":
            truncated = truncate_ip(out["ip"])
            if truncated is None:
                del out["ip"]
            else:
                out["ip"] = truncated
    return out
