//! One shutdown signal handed to every task: a `watch` channel that flips once.

use tokio::sync::watch;

/// The sending side: flips the signal for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownTrigger {
    /// A trigger not yet fired.
    pub fn new() -> Self {
        ShutdownTrigger(watch::channel(false).0)
    }

    /// Asks everything watching to stop. Idempotent.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Whether it has fired.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// A receiver of this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

/// The receiving side: resolves once shutdown is requested.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Waits until shutdown is requested (or its trigger is gone, which means the same).
    pub async fn requested(&self) {
        let mut receiver = self.0.clone();
        let _ = receiver.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_for_every_subscriber() {
        let trigger = ShutdownTrigger::new();
        let a = trigger.subscribe();
        let b = a.clone();
        assert!(!a.is_requested());
        trigger.trigger();
        a.requested().await;
        b.requested().await;
        assert!(b.is_requested());
    }

    #[tokio::test]
    async fn dropped_trigger_counts_as_shutdown() {
        let trigger = ShutdownTrigger::new();
        let s = trigger.subscribe();
        drop(trigger);
        s.requested().await;
    }
}
