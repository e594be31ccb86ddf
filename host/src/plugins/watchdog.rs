//! The call watchdog: a plugin call made by the training step that has not returned after
//! `train.call_timeout_s` seconds ends the process with an error naming the plugin, the call,
//! the step and the last checkpoint, and the command that resumes the run.
//!
//! Why exit rather than recover: a thread stuck in foreign code (a plugin spinning, blocked on
//! a lock or a device) cannot be cancelled or killed from Rust, and the plugin instance may be
//! left half-updated. The training loop cannot go on without that call's result, so the only
//! honest answer is to stop the process. Nothing is lost by doing so: checkpoints are written
//! atomically between steps, so the latest one is complete, and `latent train --resume`
//! continues from it exactly as an uninterrupted run would.
//!
//! Use: [`arm`] once in the training loop's thread (it returns `None` when the timeout is 0,
//! i.e. off), [`set_step`] before each step, and [`enter`] around each plugin call (the
//! handles in [`crate::plugins`] do that). Only calls made by the thread that armed the
//! watchdog are timed: loader threads (augmentations) are not, and neither is anything while
//! no watchdog is armed (`latent eval`, `latent embed`, library use).
//!
//! The watchdog thread sleeps on a condition variable until a call starts, then until that
//! call's deadline; entering and leaving a call costs a mutex lock, not a thread wake-up
//! per step.

use crate::train::checkpoint::Store;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// The step the training loop is on (for the message).
static STEP: AtomicU64 = AtomicU64::new(0);
/// The armed watchdog, if any.
static CURRENT: Mutex<Option<Arc<Shared>>> = Mutex::new(None);

struct Call {
    plugin: String,
    call: &'static str,
    started: Instant,
    id: u64,
}

struct Slot {
    call: Option<Call>,
    armed: bool,
    next_id: u64,
}

struct Shared {
    timeout: Duration,
    run_dir: PathBuf,
    thread: ThreadId,
    slot: Mutex<Slot>,
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the data (a call
    // record) is still meaningful.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An armed watchdog; dropping it disarms it and stops its thread.
pub struct Armed {
    shared: Arc<Shared>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        lock(&self.shared.slot).armed = false;
        self.shared.cv.notify_all();
        let mut cur = lock(&CURRENT);
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.shared)) {
            *cur = None;
        }
    }
}

/// Arms the watchdog for plugin calls made by the current thread, for the run in `run_dir`;
/// `timeout_s` = 0 turns it off (returns `None`).
pub fn arm(timeout_s: u64, run_dir: &Path) -> Option<Armed> {
    if timeout_s == 0 {
        return None;
    }
    let shared = Arc::new(Shared {
        timeout: Duration::from_secs(timeout_s),
        run_dir: run_dir.to_path_buf(),
        thread: std::thread::current().id(),
        slot: Mutex::new(Slot { call: None, armed: true, next_id: 0 }),
        cv: Condvar::new(),
    });
    let sh = shared.clone();
    let spawned =
        std::thread::Builder::new().name("latent-watchdog".into()).spawn(move || watch(&sh));
    if let Err(e) = spawned {
        tracing::warn!("cannot start the plugin-call watchdog ({e}); a plugin call that never returns will hang the run");
        return None;
    }
    *lock(&CURRENT) = Some(shared.clone());
    Some(Armed { shared })
}

/// Records the step the training loop is on, for the watchdog's message.
pub fn set_step(step: u64) {
    STEP.store(step, Ordering::Relaxed);
}

/// The step [`set_step`] last named.
pub fn step() -> u64 {
    STEP.load(Ordering::Relaxed)
}

/// Times a plugin call until the guard is dropped (a no-op unless armed from this thread).
#[must_use = "the call is timed until the guard is dropped"]
pub struct CallGuard {
    shared: Option<(Arc<Shared>, u64)>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some((sh, id)) = self.shared.take() {
            let mut slot = lock(&sh.slot);
            if slot.call.as_ref().is_some_and(|c| c.id == id) {
                slot.call = None;
            }
        }
    }
}

/// Starts timing the call `call` of plugin `plugin`.
pub fn enter(plugin: &str, call: &'static str) -> CallGuard {
    let Some(sh) = lock(&CURRENT).clone() else { return CallGuard { shared: None } };
    if sh.thread != std::thread::current().id() {
        return CallGuard { shared: None };
    }
    let id = {
        let mut slot = lock(&sh.slot);
        let id = slot.next_id;
        slot.next_id += 1;
        slot.call = Some(Call { plugin: plugin.to_string(), call, started: Instant::now(), id });
        id
    };
    sh.cv.notify_all();
    CallGuard { shared: Some((sh, id)) }
}

/// The message printed when a call overruns (also used by the tests and the docs).
pub fn message(
    plugin: &str,
    call: &str,
    timeout_s: u64,
    step: u64,
    run_dir: &Path,
    latest: Option<&Path>,
) -> String {
    let run = run_dir.display();
    match latest {
        Some(ck) => format!(
            "plugin '{plugin}' did not return from `{call}` within {timeout_s} s at step {step}; \
             the last checkpoint ({}) is intact; resume with: latent train --resume --out {run}",
            ck.display()
        ),
        None => format!(
            "plugin '{plugin}' did not return from `{call}` within {timeout_s} s at step {step}; \
             no checkpoint was written yet, so the run starts again from step 0 with the same command \
             (set train.checkpoint_every to keep more of a run)"
        ),
    }
}

fn watch(sh: &Shared) {
    let mut slot = lock(&sh.slot);
    loop {
        if !slot.armed {
            return;
        }
        let wait = match &slot.call {
            None => None,
            Some(c) => {
                let elapsed = c.started.elapsed();
                if elapsed >= sh.timeout {
                    let latest = Store::new(&sh.run_dir, 1).latest();
                    let msg = message(
                        &c.plugin,
                        c.call,
                        sh.timeout.as_secs(),
                        STEP.load(Ordering::Relaxed),
                        &sh.run_dir,
                        latest.as_deref(),
                    );
                    eprintln!("\nerror: {msg}");
                    // The stuck thread cannot be stopped: end the process (see the module docs).
                    std::process::exit(1);
                }
                Some(sh.timeout - elapsed)
            }
        };
        slot = match wait {
            None => sh.cv.wait(slot).unwrap_or_else(|e| e.into_inner()),
            Some(d) => sh.cv.wait_timeout(slot, d).unwrap_or_else(|e| e.into_inner()).0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_calls_pass_and_guards_clear_their_call() {
        let dir = tempfile::tempdir().unwrap();
        let armed = arm(5, dir.path()).expect("armed");
        for _ in 0..1000 {
            let _g = enter("p", "forward");
        }
        assert!(lock(&armed.shared.slot).call.is_none());
        // other threads are not timed
        std::thread::spawn(|| assert!(enter("p", "apply").shared.is_none())).join().unwrap();
        drop(armed);
        assert!(lock(&CURRENT).is_none());
        assert!(enter("p", "forward").shared.is_none(), "disarmed: a no-op");
        assert!(arm(0, dir.path()).is_none(), "0 turns it off");
    }

    #[test]
    fn message_names_plugin_call_step_checkpoint_and_resume_command() {
        let m = message(
            "slow",
            "compute",
            3,
            7,
            Path::new("/r"),
            Some(Path::new("/r/checkpoints/step-00000006")),
        );
        assert_eq!(
            m,
            "plugin 'slow' did not return from `compute` within 3 s at step 7; the last checkpoint \
             (/r/checkpoints/step-00000006) is intact; resume with: latent train --resume --out /r"
        );
        assert!(message("slow", "forward", 3, 0, Path::new("/r"), None)
            .contains("no checkpoint was written yet"));
    }
}
