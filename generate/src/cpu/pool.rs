//! Worker threads for the short parallel steps of a forward pass.
//!
//! Decoding one token runs ~150 products of 20-100 us each. A rayon job or
//! a parked worker costs a thread wake-up (tens of microseconds here) per
//! product, as long as the product itself; these workers spin between steps
//! and sleep only after a pause of ~1 ms, and the calling thread takes its
//! share of every step.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

type Task<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per step; workers wait for a change.
    epoch: AtomicUsize,
    /// The step's task, valid while the step runs (the caller waits for every
    /// worker before returning).
    task: Mutex<Option<Task<'static>>>,
    n_tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers finished with the current step.
    done: AtomicUsize,
    /// Workers asleep (waiting on `wake`), and the lock that guards sleeping.
    sleep: Mutex<usize>,
    wake: Condvar,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    /// One step at a time.
    caller: Mutex<()>,
}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Spins (about 1 ms here) before a worker goes to sleep.
const SPINS: u32 = 20_000;

impl Pool {
    /// The process's pool: as many threads as rayon's (RAYON_NUM_THREADS).
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(rayon::current_num_threads()))
    }

    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            task: Mutex::new(None),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            sleep: Mutex::new(0),
            wake: Condvar::new(),
        });
        let workers = threads.max(1) - 1;
        for i in 0..workers {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("flow-cpu-{i}"))
                .spawn(move || worker(&s))
                .expect("spawn a generation worker thread");
        }
        Pool {
            shared,
            workers,
            caller: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `task(i)` for every `i` in `0..n` on all threads, and returns
    /// when all are done.
    pub fn run(&self, n: usize, task: impl Fn(usize) + Sync) {
        if self.workers == 0 || n <= 1 || IN_POOL.with(Cell::get) {
            return (0..n).for_each(task);
        }
        let _one_step = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let task: Task = &task;
        // SAFETY: the reference is cleared below, after every worker has
        // finished with it, before `task` goes out of scope.
        let task: Task<'static> = unsafe { std::mem::transmute(task) };
        *s.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        s.n_tasks.store(n, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::Release);
        if *s.sleep.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            s.wake.notify_all();
        }
        IN_POOL.with(|f| f.set(true));
        take_tasks(s, task);
        IN_POOL.with(|f| f.set(false));
        while s.done.load(Ordering::Acquire) < self.workers {
            std::hint::spin_loop();
        }
        *s.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn take_tasks(s: &Shared, task: Task) {
    let n = s.n_tasks.load(Ordering::Relaxed);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        task(i);
    }
}

fn worker(s: &Shared) {
    IN_POOL.with(|f| f.set(true));
    // Not the current epoch: a step may have begun before this thread ran.
    let mut seen = 0;
    loop {
        let mut spins = 0;
        while s.epoch.load(Ordering::Acquire) == seen {
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
                continue;
            }
            let mut sleeping = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            *sleeping += 1;
            while s.epoch.load(Ordering::Acquire) == seen {
                sleeping = s.wake.wait(sleeping).unwrap_or_else(|e| e.into_inner());
            }
            *sleeping -= 1;
        }
        seen = s.epoch.load(Ordering::Acquire);
        let task = *s.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task {
            take_tasks(s, task);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

/// An output buffer that parallel tasks write disjoint parts of.
pub(crate) struct SendPtr<T = f32>(*mut T, usize);
// SAFETY: users write disjoint elements from each task (see quant::matmul_with).
unsafe impl<T: Send> Sync for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}

impl<T> SendPtr<T> {
    pub(crate) fn new(buf: &mut [T]) -> Self {
        SendPtr(buf.as_mut_ptr(), buf.len())
    }

    /// A method, so closures capture the Sync wrapper and not its field.
    pub(crate) fn at(&self, i: usize) -> *mut T {
        assert!(i < self.1, "index {i} outside the buffer ({})", self.1);
        // SAFETY: in bounds (checked above).
        unsafe { self.0.add(i) }
    }
}

/// Runs `task(0..n)` on all cores of the global pool.
pub(crate) fn parallel(n: usize, task: impl Fn(usize) + Sync) {
    Pool::global().run(n, task)
}

/// Runs `task` on one contiguous part of `0..n` per thread, each part a
/// multiple of `align` long (but the last).
pub(crate) fn parallel_split(n: usize, align: usize, task: impl Fn(std::ops::Range<usize>) + Sync) {
    let pool = Pool::global();
    let part = n.div_ceil(pool.threads()).div_ceil(align) * align;
    pool.run(pool.threads(), |t| {
        let start = (t * part).min(n);
        task(start..(start + part).min(n))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_in_every_step() {
        let pool = Pool::new(3);
        for n in [0, 1, 2, 7, 1000] {
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                pool.run(n, |i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 50),
                "n = {n}"
            );
        }
    }

    #[test]
    fn workers_wake_after_sleeping_and_nested_steps_run_inline() {
        let pool = Pool::new(2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let total = AtomicUsize::new(0);
        pool.run(8, |_| {
            pool.run(4, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 32);
    }
}
