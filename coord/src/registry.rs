//! The service registry: instances under the session, discovered with a read or followed
//! with a watch.
//!
//! Instance `ID` of service `SERVICE` is the key the backend's [`Layout::instance`] names
//! (`services/SERVICE/ID` under the namespace), put under the registering process's session
//! so that it disappears with the process. Its value is a JSON object:
//!
//! ```json
//! {"address": "10.0.0.7:8080", "metadata": {"zone": "eu-1"}}
//! ```
//!
//! `address` is required, `metadata` any JSON value (null when absent), other fields are
//! ignored; service and id come from the key. An entry that is not such an object, or whose
//! key is not `SERVICE/ID`, is skipped and counted in `sluice_coord_registry_malformed_total`.
//!
//! [`Layout::instance`]: crate::backend::Layout::instance

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{BoxStream, Change, KeyValue};
use crate::coord::Coord;
use crate::error::CoordError;
use crate::follow::Follow;
use crate::metrics::registry_malformed;
use crate::session::Session;

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The service's name.
    pub service: String,
    /// The instance's id, unique within the service.
    pub id: String,
    /// Where to reach it (such as `host:port` or a URL).
    pub address: String,
    /// Anything else clients should know, as JSON.
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// The stored value: the instance without what its key says.
#[derive(Serialize, Deserialize)]
struct Entry {
    address: String,
    #[serde(default)]
    metadata: serde_json::Value,
}

/// A registered instance. It stays registered, and is registered again under each new
/// session, until dropped (deregistered in the background) or [`Registration::close`]d.
pub struct Registration {
    coord: Coord,
    instance: Instance,
    key: String,
    /// The entry's value now; the task writes each new one.
    value: watch::Sender<Bytes>,
    task: JoinHandle<()>,
}

impl Registration {
    /// The instance registered.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Replaces the instance's metadata. The entry is written again in the background (under
    /// each new session too); watchers see the new value once it is written.
    pub fn update(&mut self, metadata: serde_json::Value) -> Result<(), CoordError> {
        self.instance.metadata = metadata;
        self.value.send_replace(encode(&self.instance)?);
        Ok(())
    }

    /// Deregisters the instance, and waits for the backend to have done it.
    pub async fn close(self) -> Result<(), CoordError> {
        self.task.abort();
        let backend = self.coord.connected().await;
        backend.delete(&self.key).await.map(|_| ())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.task.is_finished() {
            return;
        }
        self.task.abort();
        if let (Some(backend), Ok(runtime)) =
            (self.coord.backend(), tokio::runtime::Handle::try_current())
        {
            let key = self.key.clone();
            runtime.spawn(async move {
                let _ = backend.delete(&key).await;
            });
        }
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("instance", &self.instance)
            .finish()
    }
}

/// Refuses a service name or instance id that cannot be one key segment.
fn check_segment(what: &str, name: &str) -> Result<(), CoordError> {
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(CoordError::Config(format!(
            "{what} {name:?}: must be non-empty, without '/' or control characters"
        )));
    }
    Ok(())
}

impl Coord {
    /// The key prefix of `service`'s instances.
    async fn service_prefix(&self, service: &str) -> Result<String, CoordError> {
        check_segment("service name", service)?;
        let layout = self.connected().await.layout().instance;
        let template = layout.split("{id}").next().unwrap_or_default();
        Ok(template.replace("{service}", service))
    }

    /// Registers `instance` under this process's session, and keeps it registered: after a
    /// session is lost, it is put again under the next one. Waits for the backend and a
    /// session as needed; an instance registered twice (same service and id) is one entry,
    /// the last registration's.
    pub async fn register(&self, instance: Instance) -> Result<Registration, CoordError> {
        check_segment("instance id", &instance.id)?;
        let key = format!(
            "{}{}",
            self.service_prefix(&instance.service).await?,
            instance.id
        );
        let value = encode(&instance)?;
        // The first put is the caller's; later ones are the task's.
        let session = self.session().await;
        self.connected()
            .await
            .put(&key, value.clone(), Some(session.id()))
            .await?;
        let (value, values) = watch::channel(value);
        let task = tokio::spawn(keep_registered(self.clone(), key.clone(), values, session));
        Ok(Registration {
            coord: self.clone(),
            instance,
            key,
            value,
            task,
        })
    }

    /// The instances of `service` registered now, in id order.
    pub async fn discover(&self, service: &str) -> Result<Vec<Instance>, CoordError> {
        let prefix = self.service_prefix(service).await?;
        let (kvs, _) = self.connected().await.range(&prefix).await?;
        let mut instances = Instances::new(service, prefix);
        instances.reset(&kvs);
        Ok(instances.list())
    }

    /// The instances of `service`: the list now, then the whole list again after each change.
    /// Ends after its first error, as [`Coord::follow`] does.
    pub async fn watch_instances(
        &self,
        service: &str,
    ) -> Result<BoxStream<'static, Result<Vec<Instance>, CoordError>>, CoordError> {
        let prefix = self.service_prefix(service).await?;
        let mut instances = Instances::new(service, prefix.clone());
        let lists = self.follow(&prefix).map(move |item| {
            match item? {
                Follow::Snapshot { kvs, .. } => instances.reset(&kvs),
                Follow::Changes(changes) => changes.iter().for_each(|c| instances.apply(c)),
            }
            Ok(instances.list())
        });
        Ok(lists.boxed())
    }
}

/// The stored value of `instance`.
fn encode(instance: &Instance) -> Result<Bytes, CoordError> {
    let entry = Entry {
        address: instance.address.clone(),
        metadata: instance.metadata.clone(),
    };
    serde_json::to_vec(&entry)
        .map(Bytes::from)
        .map_err(|e| CoordError::Config(format!("instance {}: {e}", instance.id)))
}

/// Puts the instance again under each new session, and each new value under the current
/// one: the one writer of the entry after the first put, so that the last value written is
/// always the latest.
async fn keep_registered(
    coord: Coord,
    key: String,
    mut values: watch::Receiver<Bytes>,
    mut session: Arc<Session>,
) {
    loop {
        tokio::select! {
            () = session.ended() => {}
            changed = values.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        // A new value may come while the session is already lost (a process resumed after a
        // freeze ends its terms, and so changes its node entry, before it has a new session):
        // it is written under the next session, never under the one that ended.
        if !session.is_valid() {
            session = coord.session().await;
        }
        let value = values.borrow_and_update().clone();
        let backend = coord.connected().await;
        while let Err(error) = backend.put(&key, value.clone(), Some(session.id())).await {
            tracing::warn!(
                %key,
                error = %sluice_pipeline::error::chain(&error),
                "cannot register the instance; trying again"
            );
            let pause = coord.ttl() / 10;
            if tokio::time::timeout(pause, session.ended()).await.is_ok() {
                break;
            }
        }
    }
}

/// The instances of one service, kept from reads and changes.
struct Instances {
    service: String,
    prefix: String,
    by_key: BTreeMap<String, Instance>,
}

impl Instances {
    fn new(service: &str, prefix: String) -> Self {
        Instances {
            service: service.to_owned(),
            prefix,
            by_key: BTreeMap::new(),
        }
    }

    fn reset(&mut self, kvs: &[KeyValue]) {
        self.by_key.clear();
        for kv in kvs {
            self.put(kv);
        }
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Put(kv) => self.put(kv),
            Change::Delete { key, .. } => {
                self.by_key.remove(key);
            }
        }
    }

    fn put(&mut self, kv: &KeyValue) {
        self.by_key.remove(&kv.key);
        match self.parse(kv) {
            Some(instance) => {
                self.by_key.insert(kv.key.clone(), instance);
            }
            None => {
                tracing::debug!(key = %kv.key, "skipping a malformed registry entry");
                registry_malformed(&self.service).increment(1);
            }
        }
    }

    fn parse(&self, kv: &KeyValue) -> Option<Instance> {
        let id = kv.key.strip_prefix(&self.prefix)?;
        check_segment("instance id", id).ok()?;
        let entry: Entry = serde_json::from_slice(&kv.value).ok()?;
        Some(Instance {
            service: self.service.clone(),
            id: id.to_owned(),
            address: entry.address,
            metadata: entry.metadata,
        })
    }

    fn list(&self) -> Vec<Instance> {
        self.by_key.values().cloned().collect()
    }
}
