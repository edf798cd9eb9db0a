//! The order stages start in: of the stages that are ready, the one whose result unblocks
//! the most work goes first (with `-j 1` the order is fully determined, so it is checked
//! here line by line from the `ran` lines).

mod common;

use common::Project;

const MANIFEST: &str = r#"
[flow]
name = "order"
seed = 1

[stages.lone]                 # declared first, but nothing waits for it
kind = "source"
dataset = "rocstories"
split = "train"
limit = 5

[stages.shared]               # three stages wait for it
kind = "source"
dataset = "rocstories"
split = "test"
limit = 6

[stages.small]
kind = "subset"
data = "shared"
limit = 3

[stages.smaller]
kind = "subset"
data = "small"
limit = 2

[stages.other]
kind = "subset"
data = "shared"
limit = 4
"#;

#[test]
fn the_stage_that_unblocks_the_most_runs_first() {
    let data = require_data!();
    let p = Project::new(&data);
    p.write_manifest(MANIFEST);
    let run = p.run_ok(&["-j", "1"]);
    let order: Vec<&str> = run
        .out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  ran  "))
        .map(|rest| rest.rsplit_once(" (").map_or(rest, |(name, _)| name))
        .collect();
    // shared (3 waiting) before lone (0); then small (1 waiting) before lone, other (0)
    // ties go to the stage that became ready first.
    assert_eq!(
        order,
        ["shared", "small", "lone", "other", "smaller"],
        "{}",
        run.out.show()
    );
}
