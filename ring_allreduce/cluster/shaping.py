"""Link rates: parse ``1gbit``/``200mbit``/``unlimited`` and shape a veth with a token bucket (``tc tbf``).

A host's link is shaped in both directions by one ``tbf`` on each end of its veth: the end inside the host
limits what it sends, the end on the bridge limits what it receives (so no ``ifb`` redirect is needed). ``netem``
(added delay, loss) is often missing from kernels, so it is not used; ``tbf`` is in every kernel that has ``tc``.
"""
from __future__ import annotations

import re

from .state import ClusterError

_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|tbit)")
UNLIMITED = ("unlimited", "none", "0")


def parse_rate(text):
    """Bits per second for ``"1gbit"``, ``"200mbit"``, ``"2.5gbit"``..., or None for ``"unlimited"``."""
    if text is None:
        return None
    s = str(text).strip().lower()
    if s in UNLIMITED:
        return None
    m = _RATE.fullmatch(s)
    if not m or float(m.group(1)) <= 0:
        raise ClusterError(f"bad link rate {text!r}: use e.g. 100mbit, 1gbit, 2.5gbit or unlimited "
                           "(tc units: bit, kbit, mbit, gbit; 1 gbit = 10^9 bit/s)")
    bps = int(float(m.group(1)) * _UNITS[m.group(2)])
    if bps < 64_000:
        raise ClusterError(f"link rate {text!r} is below 64kbit; MPI start-up alone would take minutes")
    return bps


def format_rate(bps) -> str:
    if bps is None:
        return "unlimited"
    for unit in ("tbit", "gbit", "mbit", "kbit"):
        if bps >= _UNITS[unit]:
            return f"{bps / _UNITS[unit]:g}{unit}"
    return f"{bps}bit"


def tbf_args(bps: int) -> list:
    """``tc qdisc replace`` arguments for a token bucket at ``bps``.

    The bucket holds about 1 ms of traffic but at least 128 KiB: veths hand TCP segments of up to 64 KiB
    (GSO) to the qdisc, and a bucket smaller than two of them caps the rate below the one asked for.
    """
    burst = max(128 * 1024, bps // 8 // 1000)
    return ["root", "tbf", "rate", f"{bps}bit", "burst", str(burst), "latency", "50ms"]


def shape_cmds(dev_outside: str, netns: str, dev_inside: str, bps) -> list:
    """The ``tc`` commands that set both directions of one host's link to ``bps`` (None: remove shaping)."""
    if bps is None:
        return [["tc", "qdisc", "del", "dev", dev_outside, "root"],
                ["tc", "-n", netns, "qdisc", "del", "dev", dev_inside, "root"]]
    args = tbf_args(bps)
    return [["tc", "qdisc", "replace", "dev", dev_outside] + args,
            ["tc", "-n", netns, "qdisc", "replace", "dev", dev_inside] + args]
