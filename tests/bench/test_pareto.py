"""Efficiency (top-1 % per mJ) and Pareto sets: known answers (the paper's own: tests/bench/test_paper.py)."""
import pytest

from edgevit.bench.pareto import add_efficiency, dominated_by, efficiency, pareto_front, pareto_membership


def test_efficiency():
    assert efficiency(75.0, 25.0) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="> 0 mJ"):
        efficiency(75.0, 0.0)
    rows = add_efficiency([{"top1": 80.0, "energy_mj": 40.0}, {"top1": 80.0, "energy_mj": None}])
    assert rows[0]["efficiency"] == pytest.approx(2.0) and rows[1]["efficiency"] is None


def test_pareto_front_known_answer():
    #            A     B     C     D     E     F
    cost = [10.0, 20.0, 15.0, 30.0, 20.0, 5.0]
    acc = [70.0, 75.0, 76.0, 80.0, 74.0, 60.0]
    # B (20, 75) is dominated by C (15, 76); E by C too; A, C, D, F are optimal
    assert pareto_front(cost, acc) == [5, 0, 2, 3]


def test_pareto_ties_and_duplicates():
    assert pareto_front([1, 1], [5, 5]) == [0, 1]            # identical points: neither dominates
    assert pareto_front([1, 1], [5, 6]) == [1]               # same cost, more accurate wins
    assert pareto_front([1, 2], [5, 5]) == [0]               # same accuracy, cheaper wins
    assert pareto_front([], []) == []


def test_dominators():
    rows = [{"name": "a", "top1": 70, "latency_ms": 10, "energy_mj": 50},
            {"name": "b", "top1": 75, "latency_ms": 20, "energy_mj": 40},
            {"name": "c", "top1": 74, "latency_ms": 25, "energy_mj": None}]
    assert dominated_by(rows, "a", "energy_mj") == ["b"]
    assert dominated_by(rows, "c", "latency_ms") == ["b"]
    assert dominated_by(rows, "c", "energy_mj") is None


def test_pareto_membership_under_intervals():
    # a (cost 9..11, 70 %) and b (10.5..13, 71 %) overlap: a is off the front if b turns out cheaper than it,
    # on it otherwise (open); b, the more accurate, is on it whatever the costs; c is dominated by a anyway
    assert pareto_membership([9, 10.5, 20], [11, 13, 21], [70, 71, 60]) == [None, True, False]
    # well separated: every membership settled
    assert pareto_membership([9, 19, 29], [10, 20, 30], [70, 75, 72]) == [True, True, False]
