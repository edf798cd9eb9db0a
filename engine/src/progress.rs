//! Progress bars for `flow run`: one overall bar and one per running stage.
//! Hidden when stderr is not a terminal (CI logs stay clean).

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stage::Progress;

pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    visible: bool,
}

impl Bars {
    pub fn new(enabled: bool, total: u64) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let visible = enabled && !target.is_hidden();
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {pos}/{len} instances {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        if visible {
            overall.enable_steady_tick(Duration::from_millis(200));
        }
        Bars {
            multi,
            overall,
            visible,
        }
    }

    pub fn finish_one(&self) {
        self.overall.inc(1);
    }

    /// A line above the bars (or on stderr when they are hidden).
    pub fn println(&self, line: &str) {
        if self.visible {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    pub fn stage(&self, name: &str) -> StageBar {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {prefix} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(name.to_string());
        if self.visible {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        StageBar { bar }
    }

    pub fn clear(&self) {
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

/// The bar of one running stage instance; removed when dropped.
pub struct StageBar {
    bar: ProgressBar,
}

impl Progress for StageBar {
    fn set_total(&self, total: u64, unit: &str) {
        self.bar.set_length(total);
        let template = format!(
            "  {{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
    }
    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
    fn message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
}

impl Drop for StageBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
