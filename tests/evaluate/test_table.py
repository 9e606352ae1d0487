import pytest

from smooth_then_quant.evaluate.table import best_reduction, degradation_rows


def test_degradation_rows_by_hand():
    ppl = {("FP", "baseline"): {"d": 10.0}, ("FP", "paper"): {"d": 12.0}, ("FP", "smoothed"): {"d": 10.0},
           ("W4", "baseline"): {"d": 20.0}, ("W4", "paper"): {"d": 25.0}, ("W4", "smoothed"): {"d": 14.0},
           ("W8", "baseline"): {"d": 10.005}, ("W8", "smoothed"): {"d": 10.0}}
    rows = degradation_rows(ppl, ["W4", "W8"], ["baseline", "paper", "smoothed"], ["d"])
    assert [(r["scheme"], r["state"]) for r in rows] == [
        ("FP", "baseline"), ("FP", "paper"), ("FP", "smoothed"), ("W4", "baseline"), ("W4", "paper"),
        ("W4", "smoothed"), ("W8", "baseline"), ("W8", "smoothed")]
    by = {(r["scheme"], r["state"]): r for r in rows}
    assert by[("FP", "paper")]["delta_ppl"]["d"] == 2.0 and by[("FP", "paper")]["degradation_reduced"] is None
    assert by[("W4", "smoothed")]["degradation_reduced"]["d"] == pytest.approx(0.6)  # 1 - 4/10
    assert by[("W4", "paper")]["degradation_reduced"]["d"] == pytest.approx(-0.5)  # 15 vs 10: worse
    assert by[("W8", "smoothed")]["degradation_reduced"]["d"] is None  # baseline lost 0.05 %: noise
    assert best_reduction(rows, "W4", "d") == ("smoothed", pytest.approx(0.6))
