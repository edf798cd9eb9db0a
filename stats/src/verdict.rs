//! The verdict on a paper's finding, by a rule fixed before the data:
//!
//! - a contrast `agrees` when its interval excludes zero on the side of the paper's
//!   direction, `disagrees` when it excludes zero on the other side, and is
//!   `inconclusive` otherwise;
//! - a trend `agrees` when its one-sided p-value in the paper's direction is below
//!   [`ALPHA`], `disagrees` when the one-sided p-value in the opposite direction is, and
//!   is `inconclusive` otherwise.

use serde::{Deserialize, Serialize};

use crate::{Contrast, Trend};

/// The significance level of the trend rule.
pub const ALPHA: f64 = 0.05;

/// Which way the paper says a quantity moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The quantity (a contrast, or a metric along the axis) is larger / rises.
    Increase,
    /// It is smaller / falls.
    Decrease,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "increase" => Some(Direction::Increase),
            "decrease" => Some(Direction::Decrease),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Agrees,
    Disagrees,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Agrees => "agrees",
            Verdict::Disagrees => "disagrees",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// The rule for an interval of a difference.
    pub fn of_interval(low: f64, high: f64, paper: Direction) -> Verdict {
        let above = low > 0.0;
        let below = high < 0.0;
        match (paper, above, below) {
            (Direction::Increase, true, _) | (Direction::Decrease, _, true) => Verdict::Agrees,
            (Direction::Increase, _, true) | (Direction::Decrease, true, _) => Verdict::Disagrees,
            _ => Verdict::Inconclusive,
        }
    }

    pub fn of_contrast(c: &Contrast, paper: Direction) -> Verdict {
        Verdict::of_interval(c.ci_low, c.ci_high, paper)
    }

    /// The rule for a trend.
    pub fn of_trend(t: &Trend, paper: Direction) -> Verdict {
        let (with, against) = match paper {
            Direction::Increase => (t.p_increasing, t.p_decreasing),
            Direction::Decrease => (t.p_decreasing, t.p_increasing),
        };
        if with < ALPHA {
            Verdict::Agrees
        } else if against < ALPHA {
            Verdict::Disagrees
        } else {
            Verdict::Inconclusive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{paired_contrast, trend};

    /// Constructed cases: a clear effect, a clear opposite, a null; for contrasts and
    /// trends, in both paper directions.
    #[test]
    fn the_rule_on_constructed_cases() {
        let reference: Vec<Vec<f64>> = vec![(0..60).map(|e| (e % 7) as f64).collect(); 2];
        let shifted = |d: f64| -> Vec<Vec<f64>> {
            reference
                .iter()
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .map(|(e, x)| x + d + ((e * 31) % 5) as f64 * 0.002)
                        .collect()
                })
                .collect()
        };
        let up = paired_contrast(&shifted(0.2), &reference, 0.95, 2000, 1).unwrap();
        let down = paired_contrast(&shifted(-0.2), &reference, 0.95, 2000, 1).unwrap();
        let noise: Vec<Vec<f64>> = reference
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(e, x)| x + if e % 2 == 0 { 0.3 } else { -0.3 })
                    .collect()
            })
            .collect();
        let null = paired_contrast(&noise, &reference, 0.95, 2000, 1).unwrap();
        assert_eq!(
            Verdict::of_contrast(&up, Direction::Increase),
            Verdict::Agrees
        );
        assert_eq!(
            Verdict::of_contrast(&up, Direction::Decrease),
            Verdict::Disagrees
        );
        assert_eq!(
            Verdict::of_contrast(&down, Direction::Decrease),
            Verdict::Agrees
        );
        assert_eq!(
            Verdict::of_contrast(&down, Direction::Increase),
            Verdict::Disagrees
        );
        assert_eq!(
            Verdict::of_contrast(&null, Direction::Increase),
            Verdict::Inconclusive
        );
        assert_eq!(
            Verdict::of_contrast(&null, Direction::Decrease),
            Verdict::Inconclusive
        );

        let x: Vec<f64> = (0..7).flat_map(|l| [l as f64; 2]).collect();
        let rising: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, l)| l + (i % 2) as f64 * 0.01)
            .collect();
        let falling: Vec<f64> = rising.iter().map(|v| -v).collect();
        let flat: Vec<f64> = (0..14).map(|i| ((i * 5) % 3) as f64).collect();
        let t = |y: &[f64]| trend(&x, y, 2000, 9).unwrap();
        assert_eq!(
            Verdict::of_trend(&t(&rising), Direction::Increase),
            Verdict::Agrees
        );
        assert_eq!(
            Verdict::of_trend(&t(&rising), Direction::Decrease),
            Verdict::Disagrees
        );
        assert_eq!(
            Verdict::of_trend(&t(&falling), Direction::Decrease),
            Verdict::Agrees
        );
        assert_eq!(
            Verdict::of_trend(&t(&flat), Direction::Increase),
            Verdict::Inconclusive
        );
    }

    #[test]
    fn interval_edges() {
        assert_eq!(
            Verdict::of_interval(0.0, 1.0, Direction::Increase),
            Verdict::Inconclusive
        );
        assert_eq!(
            Verdict::of_interval(-1.0, -0.0001, Direction::Decrease),
            Verdict::Agrees
        );
    }
}
