//! Readiness of the running components, as `/ready` reports it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics::ready_gauge;

/// Every component's ready flag.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<Mutex<Vec<ReadyFlag>>>,
}

impl Health {
    /// Registers a component, not ready yet.
    pub fn register(&self, kind: &'static str, id: &str) -> ReadyFlag {
        let flag = ReadyFlag {
            id: Arc::from(id),
            ready: Arc::new(AtomicBool::new(false)),
            gauge: ready_gauge(kind, id),
        };
        flag.gauge.set(0.0);
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(flag.clone());
        flag
    }

    /// Ids of the components that are not ready; empty when all are.
    pub fn not_ready(&self) -> Vec<String> {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|flag| !flag.is_ready())
            .map(|flag| flag.id.to_string())
            .collect()
    }
}

/// One component's readiness: started and, where it talks to a server, connected.
#[derive(Debug, Clone)]
pub struct ReadyFlag {
    id: Arc<str>,
    ready: Arc<AtomicBool>,
    gauge: metrics::Gauge,
}

impl ReadyFlag {
    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.gauge.set(if ready { 1.0 } else { 0.0 });
    }

    /// Reads the flag.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_components_not_ready() {
        let health = Health::default();
        let a = health.register("source", "a");
        let _b = health.register("sink", "b");
        assert_eq!(health.not_ready(), ["a", "b"]);
        a.set(true);
        assert_eq!(health.not_ready(), ["b"]);
    }
}
