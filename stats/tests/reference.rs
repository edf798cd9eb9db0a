//! flow-stats against an independent implementation: scipy's t interval and Spearman's
//! rho, numpy bootstraps and scipy's permutation test, computed once into
//! `fixtures/reference.json` by `make_fixture.py`.

use flow_stats::{bootstrap_mean, paired_contrast, t_interval, trend};
use serde_json::Value;

fn fixture() -> Value {
    let text = include_str!("fixtures/reference.json");
    serde_json::from_str(text).expect("reference.json")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn t_intervals_match_scipy() {
    for case in fixture()["means"].as_array().unwrap() {
        let xs = floats(&case["xs"]);
        let s = t_interval(&xs, 0.95).unwrap();
        assert!((s.mean - f(&case["mean"])).abs() < 1e-12);
        assert!((s.sd - f(&case["sd"])).abs() < 1e-12);
        assert!(
            (s.ci_low - f(&case["t_low"])).abs() < 1e-9,
            "{s:?} vs {case}"
        );
        assert!(
            (s.ci_high - f(&case["t_high"])).abs() < 1e-9,
            "{s:?} vs {case}"
        );
    }
}

#[test]
fn bootstraps_match_a_plain_numpy_bootstrap() {
    for case in fixture()["means"].as_array().unwrap() {
        let Some(low) = case.get("boot_low") else {
            continue;
        };
        let xs = floats(&case["xs"]);
        let s = bootstrap_mean(&xs, 0.95, 20_000, 11).unwrap();
        let width = f(&case["boot_high"]) - f(low);
        assert!((s.ci_low - f(low)).abs() < 0.03 * width, "{s:?} vs {case}");
        assert!(
            (s.ci_high - f(&case["boot_high"])).abs() < 0.03 * width,
            "{s:?} vs {case}"
        );
    }
    for case in fixture()["pairs"].as_array().unwrap() {
        let c = paired_contrast(
            &[floats(&case["condition"])],
            &[floats(&case["reference"])],
            0.95,
            20_000,
            5,
        )
        .unwrap();
        let width = f(&case["high"]) - f(&case["low"]);
        assert!((c.estimate - f(&case["estimate"])).abs() < 1e-12);
        assert!(
            (c.ci_low - f(&case["low"])).abs() < 0.03 * width,
            "{c:?} vs {case}"
        );
        assert!(
            (c.ci_high - f(&case["high"])).abs() < 0.03 * width,
            "{c:?} vs {case}"
        );
    }
}

#[test]
fn trends_match_scipy() {
    for case in fixture()["trends"].as_array().unwrap() {
        let t = trend(&floats(&case["x"]), &floats(&case["y"]), 20_000, 3).unwrap();
        assert!((t.rho - f(&case["rho"])).abs() < 1e-12, "{t:?} vs {case}");
        let p = f(&case["p_increasing"]);
        // Monte Carlo p-values: both from 20000 permutations.
        assert!(
            (t.p_increasing - p).abs() < 0.01 + 0.1 * p,
            "{t:?} vs {case}"
        );
    }
}
