"""Energy per token and per conversation: measured where the machine can, estimated otherwise.

- Measured: Linux powercap (RAPL) package counters, `/sys/class/powercap/intel-rapl:N/energy_uj`,
  read before and after the work (wrap-around handled). They count the whole CPU package, other
  processes included, and are often unreadable in VMs and containers.
- Estimated: CPU-seconds the work took (user + system time of this process) x the watts one busy
  core draws on a device profile. The profiles below are assumptions, stated as such: typical
  per-core active power under a sustained matrix workload, not measurements of a particular
  device; and the CPU-seconds are this machine's, which a slower core would need more of.
Every figure says which of the two it is and carries its assumptions.
"""

from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tinytitan.errors import TinyTitanError

# name -> (watts per busy core, what it stands for)
PROFILES = {
    "laptop": (7.5, "laptop x86 CPU, ~15 W package with 2 busy cores"),
    "phone": (2.0, "phone SoC big core (Pixel/Snapdragon class), ~2 W per busy core"),
    "pi": (1.25, "Raspberry Pi 5 class board, ~5 W with 4 busy cores"),
}
POWERCAP = Path("/sys/class/powercap")
DEFAULT_BATTERY_WH = 18.2  # a 4,700 mAh, 3.87 V phone battery (Pixel 9 Pro class)


@dataclass(frozen=True)
class Profile:
    name: str
    watts_per_core: float
    note: str


def profile(spec: str) -> Profile:
    """`laptop`, `phone`, `pi`, or a number: watts per busy core on the user's device."""
    if spec in PROFILES:
        return Profile(spec, *PROFILES[spec])
    try:
        watts = float(spec)
    except ValueError:
        watts = -1.0
    if not 0 < watts < 1000:
        raise TinyTitanError(f"--profile: expected {', '.join(PROFILES)} or watts per busy core (a number "
                             f"above 0), not {spec!r}")
    return Profile(f"{watts:g} W/core", watts, "user-defined watts per busy core")


def rapl_domains(root: Path = POWERCAP) -> list[Path]:
    """Readable package-level RAPL counters (`intel-rapl:0`, `intel-rapl:1`, ... not subzones)."""
    found = []
    for zone in sorted(root.glob("intel-rapl:*")) if root.is_dir() else []:
        if zone.name.count(":") == 1 and _read_int(zone / "energy_uj") is not None:
            found.append(zone)
    return found


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class Measurement:
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    rapl_joules: float | None = None  # None: no readable counter
    domains: list[str] = field(default_factory=list)


@contextmanager
def measure(root: Path = POWERCAP):
    """Measures the CPU time, wall time and (where readable) RAPL energy of the `with` body."""
    zones = rapl_domains(root)
    before = [_read_int(z / "energy_uj") for z in zones]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
    result = Measurement(domains=[z.name for z in zones])
    yield result
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_seconds = usage.ru_utime + usage.ru_stime - cpu0
    result.wall_seconds = time.perf_counter() - wall0
    if zones:
        total = 0
        for zone, start in zip(zones, before):
            end = _read_int(zone / "energy_uj")
            if end is None or start is None:
                return
            if end < start:  # the counter wrapped
                end += _read_int(zone / "max_energy_range_uj") or 0
            total += end - start
        result.rapl_joules = total / 1e6


def joules(m: Measurement, device: Profile) -> dict:
    """Energy of one measurement: RAPL when it was read, and always the profile estimate."""
    estimate = m.cpu_seconds * device.watts_per_core
    out = {"estimated_joules": estimate, "cpu_seconds": m.cpu_seconds,
           "estimate_assumes": f"{device.watts_per_core:g} W per busy core ({device.note}) x this machine's "
                               f"CPU-seconds"}
    if m.rapl_joules is not None:
        out["rapl_joules"] = m.rapl_joules
        out["rapl_note"] = f"measured: RAPL package counters {', '.join(m.domains)} (whole package)"
    return out


def per_conversation(prefill_j_per_token: float, decode_j_per_token: float, prompt_tokens: int,
                     reply_tokens: int, turns: int, battery_wh: float, conversations: int) -> dict:
    """A conversation of `turns` turns, each adding `prompt_tokens` new prompt tokens (earlier turns
    stay in the KV cache) and `reply_tokens` generated ones."""
    if min(prompt_tokens, reply_tokens, turns, conversations) < 0 or turns == 0 or battery_wh <= 0:
        raise TinyTitanError("a conversation needs turns >= 1, token counts >= 0 and a battery above 0 Wh")
    per = turns * (prompt_tokens * prefill_j_per_token + reply_tokens * decode_j_per_token)
    return {"joules": per, "conversations": conversations, "battery_wh": battery_wh,
            "battery_percent": 100.0 * conversations * per / (battery_wh * 3600.0),
            "shape": {"prompt_tokens": prompt_tokens, "reply_tokens": reply_tokens, "turns": turns}}


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
