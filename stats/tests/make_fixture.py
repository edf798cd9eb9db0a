"""Reference values for flow-stats from an independent implementation (scipy, numpy).

Run once: python3 stats/tests/make_fixture.py > stats/tests/fixtures/reference.json
(scipy 1.17, numpy). The bootstraps here are plain numpy loops with many resamples, so
their Monte Carlo error is far below the tolerance of the Rust test.
"""
import json
import numpy as np
from scipy import stats

rng = np.random.default_rng(20261208)
cases = []
for n, scale in [(3, 1.0), (5, 0.02), (10, 3.0), (40, 0.5)]:
    xs = rng.normal(3.3, scale, n)
    lo, hi = stats.t.interval(0.95, n - 1, loc=xs.mean(), scale=stats.sem(xs))
    means = np.array([rng.choice(xs, n).mean() for _ in range(100_000)]) if n >= 10 else None
    case = {"xs": xs.tolist(), "mean": xs.mean(), "sd": xs.std(ddof=1), "t_low": lo, "t_high": hi}
    if means is not None:
        case["boot_low"], case["boot_high"] = np.percentile(means, [2.5, 97.5]).tolist()
    cases.append(case)

pairs = []
for n, shift in [(30, 0.05), (64, -0.02)]:
    ref = rng.normal(3.0, 0.4, n)
    cond = ref + shift + rng.normal(0, 0.05, n)
    d = cond - ref
    means = np.array([rng.choice(d, n).mean() for _ in range(100_000)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    pairs.append({"condition": cond.tolist(), "reference": ref.tolist(), "estimate": d.mean(), "low": lo, "high": hi})

trends = []
for kind in ["rising", "ties", "noise"]:
    x = np.repeat(np.arange(7.0), 3)
    if kind == "rising":
        y = 0.1 * x + rng.normal(0, 0.05, x.size)
    elif kind == "ties":
        y = np.round(0.1 * x + rng.normal(0, 0.2, x.size), 1)
    else:
        y = rng.normal(0, 1, x.size)
    res = stats.spearmanr(x, y)
    perm_up = stats.permutation_test((y,), lambda yy: stats.spearmanr(x, yy).statistic,
                                     permutation_type="pairings", n_resamples=20_000,
                                     alternative="greater", random_state=1)
    trends.append({"x": x.tolist(), "y": y.tolist(), "rho": res.statistic, "p_increasing": perm_up.pvalue})

print(json.dumps({"means": cases, "pairs": pairs, "trends": trends}, indent=1))
