//! SIGINT, SIGTERM and SIGHUP: the command stops cleanly and blocksnap exits 130, 143 or 129.
//!
//! A thread waits for the signals (signal-hook). The first one sets the store's cancellation
//! flag ([`blocksnap_store::cancel`]): the command stops at its next batch boundary, its Drop
//! guards remove its temporary files and lock objects, and `main` prints "interrupted" and
//! exits 128 + the signal's number. If the command has not ended [`GRACE`] later (it is blocked
//! in I/O), or at a second signal, the thread removes what the store registered (temporary
//! files, then lock objects) itself, prints "interrupted" and exits.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long a command may take to stop after the first signal.
pub const GRACE: Duration = Duration::from_secs(3);

/// The first signal received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Set by whichever of `main` and the signal thread ends the process first.
static ENDING: AtomicBool = AtomicBool::new(false);

/// Installs the handlers; without them (which cannot happen on Linux) signals keep their
/// default effect. SIGHUP is handled like the others (a closed terminal or `kill -HUP` must not
/// kill a command half-way, leaving its lock objects and temporary files behind), unless the
/// command was started with it ignored (`nohup blocksnap …`): then it stays ignored.
pub fn install() {
    let mut wanted = vec![SIGINT, SIGTERM];
    if !ignored_at_start(SIGHUP) {
        wanted.push(SIGHUP);
    }
    let mut signals = match Signals::new(&wanted) {
        Ok(s) => s,
        Err(e) => {
            say!("blocksnap: warning: cannot handle SIGINT, SIGTERM and SIGHUP ({e})");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if SIGNAL
                    .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    blocksnap_store::cancel::request();
                    let _ = std::thread::Builder::new()
                        .name("signal-grace".into())
                        .spawn(move || {
                            std::thread::sleep(GRACE);
                            give_up(sig);
                        });
                } else {
                    give_up(SIGNAL.load(Ordering::SeqCst));
                }
            }
        });
    if let Err(e) = spawned {
        say!("blocksnap: warning: cannot handle SIGINT, SIGTERM and SIGHUP ({e})");
    }
}

/// Whether signal `sig` is ignored by this process (inherited from its parent, as `nohup`
/// does): bit `sig - 1` of the `SigIgn` mask in `/proc/self/status`. False if unreadable.
fn ignored_at_start(sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| sig >= 1 && mask >> (sig - 1) & 1 == 1)
}

/// The command did not stop in time: remove what it left and exit at once.
fn give_up(sig: i32) {
    if ENDING.swap(true, Ordering::SeqCst) {
        return; // main is ending the process itself
    }
    blocksnap_store::cancel::remove_registered();
    let _ = writeln!(
        std::io::stderr(),
        "blocksnap: interrupted (the command did not stop within {} s: its temporary files and \
         lock objects were removed)",
        GRACE.as_secs()
    );
    std::process::exit(128 + sig);
}

/// Called by `main` once the command has returned. False if the signal thread is already
/// ending the process: then `main` must not exit with its own status.
pub fn finish() -> bool {
    !ENDING.swap(true, Ordering::SeqCst)
}

/// The first signal received, if any.
pub fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
