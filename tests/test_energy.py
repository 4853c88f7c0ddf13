"""Energy: the estimate is CPU-seconds x profile watts; RAPL counters are used when present."""

from __future__ import annotations

import resource
from types import SimpleNamespace

import pytest

from tinytitan.evaluate import energy
from tinytitan.evaluate.bench import energy_figures
from tinytitan.errors import TinyTitanError


def fake_clock(monkeypatch, cpu_seconds: list[float]):
    """getrusage returns these user-time readings in turn (system time 0)."""
    readings = iter(cpu_seconds)
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_utime=next(readings), ru_stime=0.0))


def test_estimate_is_cpu_seconds_times_profile_watts(monkeypatch, tmp_path):
    fake_clock(monkeypatch, [10.0, 13.5])
    with energy.measure(root=tmp_path / "no-powercap") as m:
        pass
    assert m.cpu_seconds == pytest.approx(3.5) and m.rapl_joules is None
    phone = energy.profile("phone")
    figures = energy.joules(m, phone)
    assert figures["estimated_joules"] == pytest.approx(3.5 * 2.0)
    assert "rapl_joules" not in figures and "W per busy core" in figures["estimate_assumes"]
    assert energy.joules(m, energy.profile("4.2"))["estimated_joules"] == pytest.approx(3.5 * 4.2)


def test_rapl_counters_are_read_when_present(monkeypatch, tmp_path):
    root = tmp_path / "powercap"
    for zone, start, limit in (("intel-rapl:0", 1_000_000, 10**9), ("intel-rapl:1", 999_000_000, 10**9)):
        (root / zone).mkdir(parents=True)
        (root / zone / "energy_uj").write_text(f"{start}\n")
        (root / zone / "max_energy_range_uj").write_text(f"{limit}\n")
    (root / "intel-rapl:0:0").mkdir()  # a subzone (cores) is inside package 0: not counted twice
    (root / "intel-rapl:0:0" / "energy_uj").write_text("5\n")
    fake_clock(monkeypatch, [0.0, 1.0])
    with energy.measure(root=root) as m:
        (root / "intel-rapl:0" / "energy_uj").write_text("4000000\n")  # +3 J
        (root / "intel-rapl:1" / "energy_uj").write_text("1000000\n")  # wrapped: +2 J
    assert m.domains == ["intel-rapl:0", "intel-rapl:1"]
    assert m.rapl_joules == pytest.approx(5.0)
    figures = energy.joules(m, energy.profile("laptop"))
    assert figures["rapl_joules"] == pytest.approx(5.0) and "measured" in figures["rapl_note"]


def test_conversation_and_battery_by_hand():
    conv = energy.per_conversation(0.01, 0.1, prompt_tokens=200, reply_tokens=100, turns=5, battery_wh=18.2,
                                   conversations=25)
    assert conv["joules"] == pytest.approx(5 * (200 * 0.01 + 100 * 0.1))
    assert conv["battery_percent"] == pytest.approx(100 * 25 * 60.0 / (18.2 * 3600))


def test_bench_energy_uses_the_measured_counter_when_there():
    speed = {"threads": 2, "cpu_s_per_prefill_token": 0.002, "cpu_s_per_decode_token": 0.03,
             "rapl_j_per_prefill_token": 0.004, "rapl_j_per_decode_token": 0.05, "rapl_domains": ["intel-rapl:0"]}
    figures = energy_figures(speed, [energy.profile("pi")], (10, 20, 1), 1, 10.0)
    estimate = figures["estimates"][0]
    assert estimate["estimate"] and estimate["j_per_decode_token"] == pytest.approx(0.03 * 1.25)
    assert figures["measured"]["j_per_decode_token"] == 0.05
    assert figures["measured"]["conversation"]["joules"] == pytest.approx(10 * 0.004 + 20 * 0.05)
    speed.update(rapl_j_per_prefill_token=None, rapl_j_per_decode_token=None)
    assert energy_figures(speed, [energy.profile("pi")], (10, 20, 1), 1, 10.0)["measured"] is None


@pytest.mark.parametrize("bad", ["tablet", "0", "-3", "nan"])
def test_bad_profiles_are_one_line_errors(bad):
    with pytest.raises(TinyTitanError, match="--profile"):
        energy.profile(bad)
