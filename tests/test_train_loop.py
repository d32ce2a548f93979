"""Loop machinery: atomic resumable state, deterministic sharded batches, NaN guard, curves."""
import json

import pytest
import torch

from goae.train.loop import (CurveWriter, Dist, NonFiniteLoss, TrainState, check_finite, global_batch_indices,
                             local_indices, step_seed)


def test_state_roundtrip_with_optimizer(tmp_path):
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    st = TrainState(tmp_path / "s")
    st.save(7, "h1", {"model": m.state_dict(), "opt": opt.state_dict()})
    step, objs = st.load("h1")
    assert step == 7
    m2 = torch.nn.Linear(3, 2)
    m2.load_state_dict(objs["model"])
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    opt2 = torch.optim.Adam(m2.parameters(), lr=1e-2)
    opt2.load_state_dict(objs["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert opt2.state_dict()["param_groups"][0]["lr"] == 1e-2
    # only one tensor file is kept; nothing half-written lies around
    assert len(list((tmp_path / "s").glob("state-*.safetensors"))) == 1
    assert not list((tmp_path / "s").glob(".state*"))


def test_changed_params_or_corruption_start_fresh(tmp_path):
    st = TrainState(tmp_path)
    st.save(3, "h1", {"x": {"t": torch.ones(2)}})
    logs = []
    assert st.load("h2", logs.append) is None and "params changed" in logs[-1]
    meta = json.loads(st.json_path.read_text())
    (tmp_path / meta["tensors"]).write_bytes(b"garbage")
    assert st.load("h1", logs.append) is None and "corrupt" in logs[-1]


def test_batches_deterministic_and_sharded():
    a = global_batch_indices(10, 4, step=5, seed=1)
    assert torch.equal(a, global_batch_indices(10, 4, step=5, seed=1))
    assert len(set(a.tolist())) == 4
    # one epoch (2 steps of 4 from 10) has no repeats
    ep = torch.cat([global_batch_indices(10, 4, s, 1) for s in range(2)])
    assert len(set(ep.tolist())) == 8
    d0, d1 = local_indices(a, Dist(0, 2)), local_indices(a, Dist(1, 2))
    assert torch.equal(torch.cat([d0, d1]), a)
    with pytest.raises(ValueError):
        local_indices(global_batch_indices(10, 3, 0, 0), Dist(0, 2))
    assert global_batch_indices(2, 5, 0, 0).numel() == 5  # fewer images than the batch: wraps
    assert step_seed(0, 1) != step_seed(0, 2) and step_seed(0, 1, rank=1) != step_seed(0, 1)


def test_nan_guard_names_step_and_terms():
    assert check_finite(3, {"a": torch.tensor(1.0)}, None) == {"a": 1.0}
    with pytest.raises(NonFiniteLoss) as e:
        check_finite(12, {"rec": torch.tensor(float("nan")), "bg": 0.5}, "/ckpt")
    assert e.value.step == 12 and "rec=nan" in str(e.value) and "/ckpt" in str(e.value)


def test_curve_resume_keeps_rows_before_step(tmp_path):
    c = CurveWriter(tmp_path / "c.csv", ["loss"])
    for s in range(5):
        c.add(s, {"loss": s / 10})
    c.flush()
    c2 = CurveWriter(tmp_path / "c.csv", ["loss"])
    c2.load_until(3)
    c2.add(3, {"loss": 9.0})
    c2.flush()
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    assert rows[-1].endswith(",9")
