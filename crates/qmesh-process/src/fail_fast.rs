//! Fail fast: a panic ends the process.
//!
//! A panic in a qmesh server is a bug, and it may strike while a task holds
//! process state (the routing core behind its mutex, the store's tables)
//! half-updated. Carrying on — catching the panic in the connection task,
//! taking the poisoned lock's data anyway — would serve from state no code
//! path meant to produce. So the binary installs [`install`] before starting
//! the runtime: the panic is logged as one `error` line (message, source
//! location, thread), the previous hook (the standard one, which prints the
//! backtrace under `RUST_BACKTRACE=1`) runs, and the process aborts. The
//! supervisor (`qmesh up`, systemd, Kubernetes) restarts it; clients
//! reconnect as they do after any crash.
//!
//! Libraries do not install it (tests run many servers in one process and
//! rely on the test harness catching panics); code that holds a lock treats
//! a poisoned lock as the bug it is (`expect`), never as state to carry on
//! with.

use std::panic::PanicHookInfo;

/// Installs the fail-fast hook (see the module docs). Call once, early in
/// `main`, after logging is set up.
pub fn install() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(
            panic = %message(info),
            location = %info.location().map(|l| l.to_string()).unwrap_or_default(),
            thread = std::thread::current().name().unwrap_or("?"),
            "panic: aborting the process (fail fast; state may be half-updated)"
        );
        previous(info);
        std::process::abort();
    }));
}

/// The panic's message, when it is text.
fn message(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-text payload)".to_string())
}
