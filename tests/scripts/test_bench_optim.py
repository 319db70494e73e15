"""scripts/bench_optim.py's interleaving (the timings themselves are not tested: they are the
benchmark's output, not behaviour)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_optim  # noqa: E402


def test_every_contender_runs_one_block_per_round_in_an_order_that_rotates(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_optim, "run_block", lambda c, r, n, sync: calls.append((r, c, n)) or (r, c))
    bench_optim.run_interleaved(["A", "B", "C"], steps=70, block=20, sync=lambda: None)
    order = [[c for r, c, _ in calls if r == round_index] for round_index in range(4)]
    assert order == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"], ["A", "B", "C"]]
    assert [n for r, c, n in calls if c == "A"] == [20, 20, 20, 10]  # 70 steps each


def test_the_report_names_the_allocator_settings_it_ran_under():
    meta = {
        "torch": "x", "device": "cpu", "device_name": "cpu", "threads": 2, "steps": 40, "block": 20,
        "date": "today", "load_average": (0.5, 0, 0), "load_average_end": (0.7, 0, 0),
    }
    assert "Allocator" not in bench_optim.markdown({}, {**meta, "allocator": {}})
    table = bench_optim.markdown({}, {**meta, "allocator": {"MALLOC_MMAP_THRESHOLD_": "33554432"}})
    assert "Allocator settings: MALLOC_MMAP_THRESHOLD_=33554432." in table


def test_the_attribution_contenders_take_salsas_steps_exactly():
    """Taking ||g||^2 a second time adds cost only: the trajectory is SaLSA's (fused)."""
    import torch

    def train(make) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        x, y = torch.randn(32, 6), torch.randint(3, (32,))
        opt = make(model.parameters())
        closure = bench_optim.TimedClosure(model, (x, y), lambda: None)
        for _ in range(15):
            bench_optim.closure_step(opt, closure)
        return [p.detach().clone() for p in model.parameters()]

    plain = train(lambda params: bench_optim.optim.SaLSA(params, fused=True))
    for make in bench_optim.ATTRIBUTION.values():
        assert all(torch.equal(a, b) for a, b in zip(train(make), plain))
    names = [spec.name for spec in bench_optim.optimizer_specs(torch.device("cpu"), attribute=True)]
    assert set(bench_optim.ATTRIBUTION) <= set(names)
