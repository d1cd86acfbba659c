"""Energy per inference: trace analysis against synthetic traces with known truth, RAPL against a fake
powercap tree (including counter wrap-around), bad input and the CLI."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgevit.bench.energy import load_energy_json
from edgevit.bench.rapl import RaplReader, RaplUnavailable, find_rapl_zones, measure_rapl
from edgevit.bench.trace import Trace, analyze_trace, load_trace
from edgevit.cli.main import main

FS = 5000.0  # a Monsoon samples at 5 kHz


def synth_trace(n=50, dur=0.06, gap=0.06, p_on=2.0, base=1.5, noise=0.08, drift=0.6, spikes=40, seed=0):
    """n pulses of ~p_on W net for ~dur s (each jittered ±10%) on a drifting background, with Gaussian
    noise and isolated spikes; returns t, p and the true net energy of every pulse (mJ)."""
    rng = np.random.default_rng(seed)
    total = 0.3 + n * (dur + gap) + 0.3
    t = np.arange(0, total, 1 / FS)
    # slow drift: a ramp plus a slow wave (a battery sagging, a screen dimming, ...)
    p = base + drift * t / total + 0.5 * drift * np.sin(2 * np.pi * 0.7 * t / total)
    truth, start = [], 0.3
    for _ in range(n):
        d, w = dur * rng.uniform(0.9, 1.1), p_on * rng.uniform(0.9, 1.1)
        on = (t >= start) & (t < start + d)
        p[on] += w
        truth.append(w * on.sum() / FS * 1e3)
        start += d + gap * rng.uniform(0.8, 1.2)
    p = p + rng.normal(0, noise, t.size)
    idx = rng.choice(t.size, spikes, replace=False)
    p[idx] += rng.uniform(3, 8, spikes)  # isolated spikes, 1.5-4x the inference draw
    return t, p, np.array(truth)


@pytest.mark.parametrize("seed", [0, 1])
def test_trace_recovers_each_inference_within_2_percent(seed):
    t, p, truth = synth_trace(seed=seed)
    r = analyze_trace(Trace(t, p, {"trace": "synthetic"}), n=50)
    assert r.n == 50 and r.warnings == []
    err = np.abs(np.array(r.per_inference_mj) - truth) / truth
    assert err.max() < 0.02, err.max()
    assert r.energy_mj_mean == pytest.approx(truth.mean(), rel=0.005)
    assert r.energy_mj_std == pytest.approx(truth.std(ddof=1), rel=0.15)
    assert r.net_power_w_mean == pytest.approx(2.0, rel=0.03)      # jitter ±10% averages out
    assert r.latency_ms_mean == pytest.approx(60.0, rel=0.03)
    assert 1.5 < r.idle_power_w < 2.4                              # background incl. drift


@pytest.mark.parametrize("dur,gap", [(0.015, 0.4), (0.06, 0.012)])  # ~4 % and ~83 % of the time busy
def test_trace_low_and_high_duty_cycle(dur, gap):
    t, p, truth = synth_trace(n=30, dur=dur, gap=gap, noise=0.03, seed=6)
    r = analyze_trace(Trace(t, p, {}), n=30)
    assert r.n == 30 and r.warnings == []
    err = np.abs(np.array(r.per_inference_mj) - truth) / truth
    assert err.max() < 0.02, err.max()


def test_trace_reports_a_different_number_of_regions():
    t, p, truth = synth_trace(n=49, seed=3)
    r = analyze_trace(Trace(t, p, {}), n=50)
    assert r.n == 49 and r.expected_n == 50
    assert any("expected 50" in w and "found 49" in w for w in r.warnings)
    assert r.energy_mj_mean == pytest.approx(truth.mean(), rel=0.01)


def write_monsoon_csv(path: Path, t, p, volts=4.0):
    """A Monsoon PowerTool-style export: time in ms, current in mA, voltage in V."""
    with open(path, "w") as f:
        f.write("Time(ms),Main(mA),Main Voltage(V)\n")
        for ti, pi in zip(t, p):
            f.write(f"{ti * 1e3:.4f},{pi / volts * 1e3:.5f},{volts}\n")


def test_monsoon_csv_through_the_cli(tmp_path, capsys):
    t, p, truth = synth_trace(n=20, seed=4)
    csv = tmp_path / "monsoon.csv"
    write_monsoon_csv(csv, t, p)
    out = tmp_path / "energy.json"
    assert main(["energy", "--trace", str(csv), "--n", "20", "--model", "edgevit_xxs", "--runtime", "phone",
                 "-o", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["method"] == "trace" and doc["n"] == 20 and doc["model"] == "edgevit_xxs"
    assert doc["source"]["units"] == {"time": "ms", "current": "mA", "voltage": "V"}
    assert doc["energy_mj"]["mean"] == pytest.approx(truth.mean(), rel=0.01)
    assert load_energy_json(out)[0]["energy_mj_mean"] == doc["energy_mj_mean"]


def test_power_csv_with_unit_flags(tmp_path):
    t, p, truth = synth_trace(n=10, seed=5)
    csv = tmp_path / "p.csv"
    np.savetxt(csv, np.c_[t * 1e6, p * 1e3], delimiter=",", header="timestamp,power", comments="")
    tr = load_trace(csv, time_unit="us", power_unit="mW")
    assert tr.t[1] - tr.t[0] == pytest.approx(1 / FS)
    r = analyze_trace(tr, n=10)
    assert r.n == 10 and r.energy_mj_mean == pytest.approx(truth.mean(), rel=0.01)


def _csv(tmp_path, text, name="bad.csv"):
    f = tmp_path / name
    f.write_text(text)
    return f


def test_bad_traces_give_clear_errors(tmp_path):
    rows = "\n".join(f"{i * 0.001},{1.0 + (i % 7 == 0)}" for i in range(200))
    with pytest.raises(ValueError, match=r"no power or current column.*columns are: time, temp"):
        load_trace(_csv(tmp_path, "time,temp\n" + rows))
    with pytest.raises(ValueError, match=r"no column 'watts'"):
        load_trace(_csv(tmp_path, "time,power\n" + rows), power_col="watts")
    back = "time,power\n" + rows + "\n0.1,1.0\n"
    with pytest.raises(ValueError, match=r"not strictly increasing at row 202"):
        load_trace(_csv(tmp_path, back))
    nan = "time,power\n0,1\n0.001,nan\n" + rows
    with pytest.raises(ValueError, match=r"row 3.*not a finite number"):
        load_trace(_csv(tmp_path, nan))
    with pytest.raises(ValueError, match=r"row 3.*'abc' is not a number"):
        load_trace(_csv(tmp_path, "time,power\n0,1\n0.001,abc\n" + rows))
    with pytest.raises(ValueError, match=r"only 3 samples"):
        load_trace(_csv(tmp_path, "time,power\n0,1\n1,2\n2,1\n"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_trace(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"no voltage column.*give a fixed voltage"):
        load_trace(_csv(tmp_path, "time,current\n" + rows))


def test_no_activity_is_an_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = np.arange(0, 2, 1 / FS)
    p = 1.5 + 0.2 * t + rng.normal(0, 0.05, t.size)  # idle with drift and noise, no inference
    with pytest.raises(ValueError, match="no activity"):
        analyze_trace(Trace(t, p, {"trace": "idle.csv"}), n=10)
    csv = tmp_path / "idle.csv"
    np.savetxt(csv, np.c_[t, p], delimiter=",", header="time,power", comments="")
    assert main(["energy", "--trace", str(csv), "--n", "10"]) == 2
    err = capsys.readouterr().err
    assert "no activity" in err and err.count("\n") == 1


# ---- RAPL against a fake powercap tree -------------------------------------------------------------

MAX_UJ = 262143328850


def fake_powercap(root: Path, start_uj: int = 0) -> Path:
    """intel-rapl:0 (package-0) with a core sub-zone, intel-rapl:1 (psys): what a laptop exposes."""
    zones = {"intel-rapl:0": "package-0", "intel-rapl:0/intel-rapl:0:0": "core", "intel-rapl:1": "psys"}
    for d, name in zones.items():
        z = root / d
        z.mkdir(parents=True)
        (z / "name").write_text(name + "\n")
        (z / "energy_uj").write_text(f"{start_uj}\n")
        (z / "max_energy_range_uj").write_text(f"{MAX_UJ}\n")
    # sysfs puts sub-zones beside the parent too (as links); make it a plain dir here
    (root / "intel-rapl:0:0").mkdir()
    for f in ("name", "energy_uj", "max_energy_range_uj"):
        (root / "intel-rapl:0:0" / f).write_text((root / "intel-rapl:0/intel-rapl:0:0" / f).read_text())
    return root


class FakeMachine:
    """A clock and a package counter: idle draws `idle_w`; each workload call takes `dt` s at `busy_w`."""

    def __init__(self, root: Path, idle_w=3.0, busy_w=12.0, dt=0.02):
        self.file = root / "intel-rapl:0" / "energy_uj"
        self.now, self.idle_w, self.busy_w, self.dt = 0.0, idle_w, busy_w, dt
        self.calls = 0

    def _add(self, joules):
        uj = int(self.file.read_text()) + round(joules * 1e6)
        self.file.write_text(f"{uj % (MAX_UJ + 1)}\n")  # the hardware counter wraps

    def clock(self):
        return self.now

    def sleep(self, s):
        self.now += s
        self._add(self.idle_w * s)

    def workload(self):
        self.calls += 1
        self.now += self.dt
        self._add(self.busy_w * self.dt)


def test_rapl_zones_default_to_packages(tmp_path):
    root = fake_powercap(tmp_path / "powercap")
    assert [z.name for z in find_rapl_zones(root)] == ["package-0"]
    assert [z.name for z in find_rapl_zones(root, ["psys"])] == ["psys"]
    with pytest.raises(ValueError, match="no such RAPL zone.*available: package-0, psys"):
        find_rapl_zones(root, ["dram"])


@pytest.mark.parametrize("start_uj", [0, MAX_UJ - 1_000_000])  # the second wraps during the first repeat
def test_rapl_measurement_with_idle_subtraction_and_wraparound(tmp_path, start_uj):
    root = fake_powercap(tmp_path / "powercap", start_uj)
    m = FakeMachine(root)
    r = measure_rapl(m.workload, n=20, repeats=3, warmup=2, root=root, clock=m.clock, sleep=m.sleep,
                     model="fake", runtime="eager")
    assert m.calls == 2 + 3 * 20
    # net energy per inference = (12 W - 3 W) * 20 ms = 180 mJ
    assert r.energy_mj_mean == pytest.approx(180.0, abs=1e-3) and r.energy_mj_std < 1e-3
    assert r.power_w_mean == pytest.approx(12.0, abs=1e-4)
    assert r.net_power_w_mean == pytest.approx(9.0, abs=1e-4)
    assert r.idle_power_w == pytest.approx(3.0, abs=1e-4)
    assert r.latency_ms_mean == pytest.approx(20.0)
    assert r.to_json()["source"]["zones"] == ["package-0"]


def test_rapl_reader_wraps_once():
    class Z:  # one zone whose counter wraps at 1000
        max_energy_uj = 1000
    reader = RaplReader.__new__(RaplReader)
    reader.zones = [Z()]
    assert reader.joules([990], [5]) == pytest.approx(16e-6)   # 990 -> 1000 -> 0 -> 5
    assert reader.joules([5], [990]) == pytest.approx(985e-6)


def test_rapl_missing_points_to_the_trace_mode(tmp_path, capsys):
    with pytest.raises(RaplUnavailable, match=r"does not exist.*trace mode"):
        find_rapl_zones(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RaplUnavailable, match=r"no intel-rapl:N zone.*trace mode"):
        find_rapl_zones(tmp_path / "empty")
    assert main(["energy", "--model", "edgevit_xxs", "--powercap", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "RAPL is not available" in err and "edgevit energy --trace" in err and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_rapl_unreadable_counter(tmp_path):
    root = fake_powercap(tmp_path / "powercap")
    (root / "intel-rapl:0" / "energy_uj").chmod(0)
    with pytest.raises(RaplUnavailable, match="not readable"):
        find_rapl_zones(root)


def test_rapl_with_a_real_runner(tmp_path):
    from edgevit.bench.runners import build_runner
    runner = build_runner("edgevit_xxs", "eager", img_size=64, threads=1)
    root = fake_powercap(tmp_path / "powercap")
    m = FakeMachine(root, idle_w=2.0, busy_w=6.0, dt=0.01)

    def workload():
        runner()
        m.workload()
    r = measure_rapl(workload, n=3, repeats=2, warmup=1, root=root, clock=m.clock, sleep=m.sleep,
                     model="edgevit_xxs", runtime="eager", label=runner.label, img_size=runner.img_size)
    assert r.energy_mj_mean == pytest.approx(40.0, abs=1e-3)  # (6 - 2) W * 10 ms
    assert r.to_json()["label"] == "edgevit_xxs (fused)" and r.img_size == 64
