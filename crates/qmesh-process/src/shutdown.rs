use std::sync::Arc;

use tokio::sync::watch;

/// A process-wide stop signal.
///
/// Cloneable; every clone sees the same signal. Tasks select on
/// [`Shutdown::triggered`] to stop accepting work, finish or fail what is in
/// flight, and return.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown { tx: Arc::new(tx), rx }
    }

    /// A signal that SIGINT or SIGTERM triggers. Must be called inside a
    /// tokio runtime.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = Shutdown::new();
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = trigger.triggered() => return,
            }
            trigger.trigger();
        });
        Ok(shutdown)
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the signal has been triggered (at once if it already was).
    pub async fn triggered(&self) {
        let mut rx = self.rx.clone();
        // The sender lives as long as any clone of `self`, so `wait_for`
        // cannot fail while we hold one.
        let _ = rx.wait_for(|&stopped| stopped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let a = Shutdown::new();
        let b = a.clone();
        assert!(!b.is_triggered());
        let waiter = tokio::spawn(async move { b.triggered().await });
        a.trigger();
        waiter.await.unwrap();
        assert!(a.is_triggered());
        // Waiting after the fact returns at once.
        a.clone().triggered().await;
    }
}
