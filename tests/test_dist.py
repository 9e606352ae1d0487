"""dist.py and the merges it relies on, in one process (the multi-process runs: tests/test_distributed.py)."""
import torch

from smooth_then_quant import dist
from smooth_then_quant.probe.stats import PointAccumulator, first_shift, merge


def _batches(seed=0, n=7, b=2, t=16, c=12):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b * t, c, generator=g) * torch.linspace(0.1, 3, c) + torch.linspace(-5, 50, c) for _ in range(n)]
    xs[3][5, 4] = 5e6  # a massive activation in batch 3 (rank 1 of 2)
    xs[4][9, 2] = -7e6  # and one in batch 4 (rank 0)
    return xs, b, t


def _acc(c, shift=None, max_records=20000):
    a = PointAccumulator(channels=c, top_k=5, max_records=max_records)
    a.shift = shift
    return a


def test_merged_ranks_give_the_single_process_statistics():
    xs, b, t = _batches()
    one = _acc(12)
    for i, x in enumerate(xs):
        one.update(x, t, i * b)
    shift = first_shift(xs[0])
    parts = [_acc(12, shift.clone()) for _ in range(3)]  # world size 3: batch k on rank k % 3
    for i, x in enumerate(xs):
        parts[i % 3].update(x, t, i * b)
    a, m = one.finalize(), merge(parts).finalize()
    for name in ("mean", "std", "mean_ex", "std_ex", "absmax", "count_ex"):
        torch.testing.assert_close(getattr(m, name), getattr(a, name), rtol=1e-12, atol=0)
    assert (m.count, m.calls, m.shape, m.median_abs, m.top) == (a.count, a.calls, a.shape, a.median_abs, a.top)
    assert m.massive == a.massive and len(a.massive) == 2 and m.massive_overflow == a.massive_overflow


def test_merged_records_are_capped_as_one_accumulator_caps_them():
    xs, b, t = _batches(seed=1)
    for i, x in enumerate(xs):
        x[i, 0] = 9e6 + i  # one massive activation per batch
    one = _acc(12, max_records=3)
    for i, x in enumerate(xs):
        one.update(x, t, i * b)
    parts = [_acc(12, first_shift(xs[0]), max_records=3) for _ in range(2)]
    for i, x in enumerate(xs):
        parts[i % 2].update(x, t, i * b)
    a, m = one.finalize(), merge(parts).finalize()
    assert [r.sample for r in m.massive] == [r.sample for r in a.massive] == [0, 2, 4]
    assert m.massive_overflow == a.massive_overflow == 6  # 9 records (two more planted by _batches)


def test_shares_and_interleave_undo_each_other(monkeypatch):
    items = list(range(11))
    shares = []
    for r in range(4):
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        monkeypatch.setattr(dist, "world_size", lambda: 4)
        shares.append(dist.mine(items))
    assert shares[1] == [1, 5, 9] and dist.interleave(shares) == items


def test_owners_balance_the_sizes(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    sizes = [576**2, 576**2, 1536**2, 576**2]  # q/k/v, o, down, gate/up
    own = dist.owners(sizes)
    assert own[2] == 0 and set(own) == {0, 1}
    load = [sum(s for s, o in zip(sizes, own) if o == r) for r in (0, 1)]
    assert max(load) == 1536**2  # the largest alone on one rank, the rest on the other


def test_a_plain_process_is_world_size_one():
    assert not dist.active() and dist.world_size() == 1 and dist.is_main()
    t = torch.tensor([1.0, -2.0])
    assert dist.sum64(t).dtype == torch.float64 and torch.equal(dist.amax(t), t)
    assert dist.gather("x") == ["x"] and dist.mine([1, 2]) == [1, 2]


def test_a_preset_that_leaves_a_process_without_a_batch_is_refused_before_any_work(monkeypatch):
    """Regression (bench/distributed.py, world size 2): the quickstart's evidence_samples 4 in batches of 4 is one batch;
    rank 1 failed minutes into the run. Now check() names the key and the value that works, before any work."""
    import pytest

    from smooth_then_quant.errors import SmoothQuantError
    from smooth_then_quant.pipeline import check
    from smooth_then_quant.recipe import load_recipe
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SmoothQuantError, match=r"evaluation.evidence_samples 4 in batches of 4 \(calibration.batch_size\) "
                                               r"make 1 batch\(es\) for 2 processes.*--set evaluation.evidence_samples=8"):
        check(load_recipe("quickstart", ["output_dir=/tmp/unused", "analysis.plots=false"]))
    check(load_recipe("quickstart", ["output_dir=/tmp/unused", "analysis.plots=false", "evaluation.evidence_samples=8"]))
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(SmoothQuantError, match=r"calibration.samples 16 in batches of 4 \(calibration.batch_size\) make 4"):
        check(load_recipe("quickstart", ["output_dir=/tmp/unused", "analysis.plots=false", "evaluation.evidence_samples=8"]))
