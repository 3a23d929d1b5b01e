"""A sweep over seeds: forgetting at equal task level averaged over seeds with a Student-t interval, a bootstrap over
the retention questions, pairs of methods compared seed by seed, and the plot's bands, all against values computed
by hand."""

import math

import pytest

from goft.evaluation import sweep_plot
from goft.evaluation.intervals import mean_interval, paired_difference, percentile_interval, t_quantile
from goft.evaluation.sweep import render_sweep, sweep_summary


def row(group, seed, nll, kl, lost=(), known=10, base_nll=2.0, ppl=(10.0, 10.0)):
    return {
        "group": group,
        "seed": seed,
        "name": f"{group}@seed={seed}@{nll}",
        "kl_base_tuned": kl,
        "perplexity_base": ppl[0],
        "perplexity_tuned": ppl[1],
        "task": {"task": "exact_match", "answer_nll_base": base_nll, "answer_nll_tuned": nll},
        "knowledge": {"retention": 1 - len(lost) / known, "known_to_base": known, "lost": list(lost)},
    }


@pytest.mark.parametrize("df, table", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (29, 2.045)])
def test_t_quantiles_match_the_printed_table(df, table):
    assert t_quantile(df) == pytest.approx(table, abs=5e-4)


def test_mean_interval_and_paired_difference_by_hand():
    interval = mean_interval([0.1, 0.2, 0.3])  # s = 0.1: half-width t₂ · 0.1 / √3
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert (interval.mean, interval.low, interval.high, interval.n) == pytest.approx((0.2, 0.2 - half, 0.2 + half, 3))
    assert interval.verdict() == "level"
    one = mean_interval([0.4])
    assert one.low is None and one.verdict() == "one seed"
    # a − b per seed: −0.35, −0.42, −0.40 (mean −0.39, s = √0.0013)
    difference = paired_difference({1: 0.1, 2: 0.2, 3: 0.3}, {1: 0.45, 2: 0.62, 3: 0.7, 4: 9.0})
    half = 4.302653 * math.sqrt(0.0013) / math.sqrt(3)
    assert (difference.mean, difference.low, difference.high) == pytest.approx((-0.39, -0.39 - half, -0.39 + half))
    assert difference.n == 3 and difference.verdict() == "lower"  # seed 4 is not shared: left out
    assert paired_difference({1: 0.0}, {2: 0.0}) is None
    assert percentile_interval([float(i) for i in range(101)]) == pytest.approx((2.5, 97.5))


def test_forgetting_at_equal_task_level_over_seeds():
    # one run per (method, seed), every one at answer NLL 0.1: its forgetting at level 0.1 is its own value
    rows = [row("a", seed, 0.1, kl) for seed, kl in ((1, 0.1), (2, 0.2), (3, 0.3))]
    rows += [row("b", seed, 0.1, kl) for seed, kl in ((1, 0.45), (2, 0.62), (3, 0.7))]
    rows.append(row("c", 1, 0.3, 0.05))  # one seed, never reaches 0.1
    summary = sweep_summary(rows, [0.5, 0.1])["kl"]
    a, b, c = (summary["methods"][m] for m in "abc")
    assert a["seeds"] == [1, 2, 3] and a["per_seed"]["0.1"] == pytest.approx({"1": 0.1, "2": 0.2, "3": 0.3})
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert a["at_level"]["0.1"] == pytest.approx(0.2) and a["interval"]["0.1"] == pytest.approx(
        [0.2 - half, 0.2 + half]
    )
    # at 0.5, each seed interpolates from its base (2, 0) to its run (0.1, f): f · log(2 / 0.5) / log(2 / 0.1)
    share = math.log(4) / math.log(20)
    assert a["per_seed"]["0.5"]["2"] == pytest.approx(0.2 * share)
    assert c["at_level"]["0.1"] is None and c["interval"]["0.5"] is None  # one seed: a mean, no interval
    assert summary["common_levels"] == [0.5]  # c never reaches 0.1
    pairs = {(p["a"], p["b"]): p for p in summary["differences"]["0.1"]}
    assert set(pairs) == {("a", "b")} and pairs["a", "b"]["verdict"] == "lower"
    assert pairs["a", "b"]["mean"] == pytest.approx(-0.39)
    assert {(p["a"], p["b"]): p["verdict"] for p in summary["differences"]["0.5"]}[("a", "c")] == "one seed"
    table = render_sweep(sweep_summary(rows, [0.5, 0.1]), [0.5, 0.1])
    c_at_half = 0.05 * math.log(4) / math.log(2 / 0.3)  # from its base (2, 0) to its run (0.3, 0.05)
    assert f"| a | 3 | {0.2 * share:.3g} [" in table and f"| c | 1 | {c_at_half:.3g} | — |" in table
    assert "| 0.1 | a − b | -0.39 |" in table and "lower |" in table


def test_a_level_counts_only_where_every_seed_reaches_it():
    rows = [row("a", 1, 0.05, 0.1), row("a", 2, 0.2, 0.1)]  # seed 2's most trained run stops at 0.2
    method = sweep_summary(rows, [0.1])["kl"]["methods"]["a"]
    assert method["per_seed"]["0.1"] == {"1": pytest.approx(0.1 * math.log(20) / math.log(40)), "2": None}
    assert method["at_level"]["0.1"] is None and method["interval"]["0.1"] is None


def test_loss_rise_is_the_change_of_mean_loss_per_token_on_general_text():
    rows = [row("a", 1, 0.1, 0.1, ppl=(10.0, 12.0))]
    assert sweep_summary(rows, [0.1])["loss_rise"]["methods"]["a"]["at_level"]["0.1"] == pytest.approx(math.log(1.2))


def test_the_share_lost_gets_a_bootstrap_over_the_questions():
    # every seed's run loses the same two of ten known questions: the share lost is 2/10, and resampling the ten
    # questions makes it Binomial(10, 0.2)/10, whose central 95% is [0, 0.5] (P(X ≤ 4) = 0.967, P(X ≤ 5) = 0.994)
    rows = [row("a", seed, 0.1, 0.1, lost=("q1", "q2")) for seed in (1, 2)]
    rows += [row("b", seed, 0.1, 0.1) for seed in (1, 2)]  # loses nothing: no resample can change that
    first = sweep_summary(rows, [0.1])["lost"]["methods"]
    again = sweep_summary(rows, [0.1])["lost"]["methods"]
    assert first["a"]["at_level"]["0.1"] == pytest.approx(0.2)
    low, high = first["a"]["bootstrap"]["0.1"]
    assert low == 0.0 and high == pytest.approx(0.5, abs=0.1)
    assert first["b"]["bootstrap"]["0.1"] == [0.0, 0.0]
    assert first == again  # seeded: the report is the same at every rewrite
    # rows asked different known sets cannot be resampled together: no bootstrap, the rest unchanged
    mixed = rows + [row("c", 1, 0.1, 0.1, known=12)]
    assert "bootstrap" not in sweep_summary(mixed, [0.1])["lost"]["methods"]["a"]


def test_the_plot_draws_each_band_from_the_summary(tmp_path, monkeypatch):
    import matplotlib.axes

    rows = [row("a", seed, nll, kl) for seed in (1, 2, 3) for nll, kl in ((0.5, 0.05 * seed), (0.05, 0.2 * seed))]
    rows += [row("b", 1, 0.1, 0.3)]
    summary = sweep_summary(rows, [0.5, 0.1])
    drawn = []
    original = matplotlib.axes.Axes.fill_between

    def record(self, x, low, high, **kwargs):
        drawn.append((self, list(x), list(low), list(high)))
        return original(self, x, low, high, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", record)
    sweep_plot.plot_sweep(rows, summary, tmp_path / "plot.png", "t", [0.5, 0.1])
    assert (tmp_path / "plot.png").stat().st_size > 0
    band = summary["kl"]["methods"]["a"]["band"]
    assert len(band["levels"]) == 24 and band["levels"][0] == pytest.approx(2.0) and band["levels"][-1] == 0.05
    kl_bands = [d for d in drawn if d[0].get_ylabel().startswith("KL")]  # labelled once drawn
    assert len(kl_bands) == 1  # method a (three seeds) has a band; b (one seed) a frontier curve
    assert list(kl_bands[0][1:]) == [band["levels"], band["low"], band["high"]]
    assert all(lo <= mean <= hi for lo, mean, hi in zip(band["low"], band["mean"], band["high"]))


def test_a_grid_is_bracketed_from_below_or_says_it_is_not():
    def rated(lr, nll, kl, seed=1):
        return {**row("a", seed, nll, kl), "learning_rate": lr}

    kl = lambda r: r["kl_base_tuned"]  # noqa: E731
    from goft.evaluation.sweep import bracket

    # lr 1e-4 reaches 0.1 forgetting least; 5e-5 beside it reaches 0.1 too but forgets more
    runs = [rated(5e-5, 0.08, 0.3), rated(1e-4, 0.05, 0.2), rated(1e-3, 0.01, 0.9)]
    assert bracket(runs, kl, 0.1) == {"reads": "lower rate forgets more", "rate": 1e-4, "lower_rate": 5e-5}
    # the next lower rate does not reach the level in the budget's steps
    runs = [rated(5e-5, 0.3, 0.01), rated(1e-4, 0.05, 0.2), rated(1e-3, 0.01, 0.9)]
    assert bracket(runs, kl, 0.1)["reads"] == "budget stops the lower rate"
    # the least-forgetting run is the lowest rate: nothing says a lower one would not forget less
    runs = [rated(1e-4, 0.05, 0.2), rated(1e-3, 0.01, 0.9)]
    assert bracket(runs, kl, 0.1) == {"reads": "not bracketed", "rate": 1e-4, "lower_rate": None}
    assert bracket(runs, kl, 0.001)["reads"] == "not reached"
    table = render_sweep(sweep_summary(runs + [rated(1e-4, 0.05, 0.25, seed=2)], [0.1]), [0.1])
    assert (
        "Not bracketed from below (no lower rate was run; a lower one might forget less): a at 0.1 (seed 1, 2)" in table
    )
