//! The cores a stage computes on: the scheduler grants a stage
//! `ctx.threads` cores (all of them for the kinds whose `threads` says
//! [`flow_engine::Threads::All`]), and the stage runs its parallel work in a
//! pool of exactly that many, so that stages running side by side do not
//! oversubscribe the machine.

use flow_engine::StageError;

/// A rayon pool of `threads` workers (at least one).
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, StageError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| StageError::Other(format!("thread pool: {e}")))
}
