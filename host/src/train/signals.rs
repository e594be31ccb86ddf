//! Ctrl-C, SIGTERM and SIGHUP: the current step finishes, a checkpoint is written and the
//! process exits with 128 + the signal (the run loop polls [`received`]).

use std::sync::atomic::{AtomicI32, Ordering};

/// The first of SIGINT, SIGTERM or SIGHUP received (0: none yet).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "interrupt (SIGINT)",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// One path for Ctrl-C and what schedulers send (Slurm and Kubernetes: SIGTERM; a closed
/// terminal: SIGHUP): the current step finishes, a checkpoint is written and the process exits
/// with 128 + the signal's number. A second signal (of any of the three) exits at once, without a
/// checkpoint.
pub fn install() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        tracing::warn!("cannot install the signal handlers: Ctrl-C and SIGTERM will stop the run without a checkpoint");
        return;
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            // in a data-parallel run, say which rank and step (mpirun sends SIGTERM to every
            // rank when one fails, and this is then the only word from a rank stuck waiting)
            let world = crate::dist::world();
            let who = if world.is_distributed() {
                format!(
                    "rank {} of {}, step {}: ",
                    world.rank(),
                    world.size(),
                    crate::plugins::watchdog::step()
                )
            } else {
                String::new()
            };
            if SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                eprintln!("\n{who}{} again: exiting without a checkpoint", signal_name(sig));
                std::process::exit(128 + sig);
            }
            eprintln!("\n{who}{}: finishing the current step and writing a checkpoint (send it again to quit at once)", signal_name(sig));
        }
    });
}

/// The first signal received since [`install`] (0: none).
pub fn received() -> i32 {
    SIGNAL.load(Ordering::SeqCst)
}
