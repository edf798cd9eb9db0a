//! Which ready instance starts next (list scheduling).
//!
//! Among the instances whose inputs are done, the one that unblocks the most work goes first:
//! a generation stage feeding thirty trainings starts before a training that feeds one
//! evaluation, so its results (and its failures) come early. An instance that does not fit
//! in the free cores does not hold back a lighter one behind it: a one-core stage (an HTTP
//! generator waiting on the network) runs beside the rest instead of after it.

use crate::plan::Plan;

/// How many selected instances depend on each instance, directly or through others: the
/// work its result unblocks.
pub fn unblocked_counts(plan: &Plan, selected: &[bool]) -> Vec<usize> {
    let n = plan.instances.len();
    let mut seen = vec![usize::MAX; n];
    (0..n)
        .map(|i| {
            let mut count = 0;
            let mut stack = plan.downstream(i);
            while let Some(d) = stack.pop() {
                if seen[d] == i {
                    continue;
                }
                seen[d] = i;
                if selected[d] {
                    count += 1;
                }
                stack.extend(plan.downstream(d));
            }
            count
        })
        .collect()
}

/// The position in `ready` of the instance to start now, if any: the highest priority among
/// those that `fit` (in the free cores, or the free job slots of an executor; the earliest
/// on ties, so runs are repeatable); when nothing runs (`idle`), the highest priority
/// whatever its weight, since it has all the cores there are.
pub fn pick(
    ready: &[usize],
    priority: &[usize],
    fits: impl Fn(usize) -> bool,
    idle: bool,
) -> Option<usize> {
    let best = |fits: &dyn Fn(usize) -> bool| {
        let mut best: Option<usize> = None;
        for (pos, &i) in ready.iter().enumerate() {
            if fits(i) && best.is_none_or(|b| priority[i] > priority[ready[b]]) {
                best = Some(pos);
            }
        }
        best
    };
    best(&fits).or_else(|| if idle { best(&|_| true) } else { None })
}

#[cfg(test)]
mod tests {
    // Instances 0..4 with these priorities; weights: 0 and 1 take both cores, 2 and 3 one.
    const PRIORITY: [usize; 4] = [5, 1, 9, 0];
    fn weight(i: usize) -> usize {
        if i < 2 {
            2
        } else {
            1
        }
    }

    /// [`super::pick`] with `free` cores.
    fn pick(
        ready: &[usize],
        priority: &[usize],
        w: fn(usize) -> usize,
        free: usize,
        idle: bool,
    ) -> Option<usize> {
        super::pick(ready, priority, |i| w(i) <= free, idle)
    }

    #[test]
    fn the_instance_that_unblocks_the_most_starts_first() {
        assert_eq!(pick(&[1, 0, 3], &PRIORITY, weight, 2, true), Some(1));
        assert_eq!(pick(&[3, 2], &PRIORITY, weight, 2, true), Some(1));
    }

    #[test]
    fn ties_go_to_the_earliest_ready() {
        let priority = [3, 3, 3, 3];
        assert_eq!(pick(&[2, 3], &priority, weight, 2, true), Some(0));
        assert_eq!(pick(&[3, 2], &priority, weight, 2, true), Some(0));
    }

    #[test]
    fn a_light_instance_runs_beside_a_heavy_one_that_does_not_fit() {
        // One core is busy: the two-core instance 0 waits, the one-core 3 starts.
        assert_eq!(pick(&[0, 3], &PRIORITY, weight, 1, false), Some(1));
        // Nothing fits and something runs: wait for it.
        assert_eq!(pick(&[0, 1], &PRIORITY, weight, 1, false), None);
        assert_eq!(pick(&[], &PRIORITY, weight, 2, true), None);
    }

    #[test]
    fn when_idle_the_best_starts_even_if_it_wants_more_cores_than_there_are() {
        // `-j 1`: a two-core instance still runs, alone.
        assert_eq!(pick(&[1, 0], &PRIORITY, weight, 1, true), Some(1));
        // But a fitting one is preferred even at a lower priority.
        assert_eq!(pick(&[0, 3], &PRIORITY, weight, 1, true), Some(1));
    }
}
