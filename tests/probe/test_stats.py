import torch

from smooth_then_quant.probe import PointAccumulator, median_abs, topk_abs


def batches(seed=0, n=5, b=3, t=20, c=24):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(b * t, c, generator=g) * torch.linspace(0.1, 3, c) + torch.linspace(-5, 50, c)
        out.append(x)
    return out, b, t


def test_streaming_moments_match_direct_computation():
    xs, b, t = batches()
    acc = PointAccumulator(channels=xs[0].shape[1], massive_abs=1e9)
    for i, x in enumerate(xs):
        acc.update(x, seq_len=t, sample_offset=i * b)
    st = acc.finalize()
    full = torch.cat(xs).double()
    torch.testing.assert_close(st.mean, full.mean(0))
    torch.testing.assert_close(st.std, full.std(0, unbiased=False), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st.absmax, full.abs().amax(0))
    assert abs(st.tensor_mean - full.mean().item()) < 1e-6
    assert abs(st.tensor_std - full.std(unbiased=False).item()) < 1e-5
    assert st.count == full.shape[0] and st.calls == len(xs)


def test_top_k_positions_are_exact():
    xs, b, t = batches(seed=3)
    xs[2][7, 5] = -999.0  # sample 2*3 + 7//20 = 6, token 7, channel 5
    xs[4][45, 11] = 777.0  # sample 12 + 2 = 14, token 5, channel 11
    acc = PointAccumulator(channels=24, top_k=4, massive_abs=1e9)
    for i, x in enumerate(xs):
        acc.update(x, seq_len=t, sample_offset=i * b)
    top = acc.finalize().top
    assert top[0] == (-999.0, 6, 7, 5)
    assert top[1] == (777.0, 14, 5, 11)
    full = torch.cat(xs)
    assert [abs(v) for v, *_ in top] == full.abs().flatten().topk(4).values.tolist()


def test_topk_abs_against_sort():
    x = torch.randn(300, 40)
    vals, rows, chans = topk_abs(x, 10)
    ref = x.abs().flatten().topk(10)
    assert vals.abs().tolist() == ref.values.tolist()
    assert (x[rows, chans] == vals).all()


def test_median_exact_and_estimated():
    small = torch.randn(100, 50)
    assert median_abs(small) == small.abs().flatten().kthvalue(2500).values.item()
    big = torch.randn(2000, 600)  # > 2**18 elements: estimated from a subsample
    exact = big.abs().median().item()
    assert abs(median_abs(big) - exact) / exact < 0.03


def test_massive_elements_are_excluded_exactly_and_records_are_bounded():
    xs, b, t = batches(seed=5, c=8)
    xs = [x / 100 for x in xs]  # medians ~0.1; plant values >> 1000 x median
    planted = [(0, 3, 2, 5000.0), (1, 10, 2, -7000.0), (3, 0, 6, 9000.0)]
    for bi, row, ch, v in planted:
        xs[bi][row, ch] = v
    acc = PointAccumulator(channels=8, max_records=2)
    for i, x in enumerate(xs):
        acc.update(x, seq_len=t, sample_offset=i * b)
    st = acc.finalize()
    assert len(st.massive) == 2 and st.massive_overflow == 1  # bounded list, all counted
    full = torch.cat(xs).double()
    mask = full.abs() > 1000
    for ch in range(8):
        keep = full[~mask[:, ch], ch]
        torch.testing.assert_close(st.mean_ex[ch], keep.mean(), rtol=1e-5, atol=1e-6)  # float32 batch sums
        torch.testing.assert_close(st.std_ex[ch], keep.std(unbiased=False), rtol=1e-5, atol=1e-7)
    rec = st.massive[0]
    assert (rec.sample, rec.token, rec.channel, rec.value) == (0 * b + 3 // t, 3 % t, 2, 5000.0)


def test_memory_does_not_grow_with_samples():
    """The accumulator's tensors have the channel count as their only size."""
    acc = PointAccumulator(channels=16)
    g = torch.Generator().manual_seed(0)
    for i in range(50):
        acc.update(torch.randn(64, 16, generator=g), seq_len=16, sample_offset=4 * i)
    sizes = [v.numel() for v in vars(acc).values() if torch.is_tensor(v)]
    assert max(sizes) <= 16 * 3
    assert len(acc.medians) == 50  # one float per batch
