//! Resources: clients built once per process from a top-level section (`[coord]`, `[redis]`)
//! and shared by every component that asks for them by type.
//!
//! A crate registers the section with [`Registry::resource`](crate::Registry::resource). The
//! runtime builds each configured resource (no I/O) in the order the registry registered
//! them — so a resource can use what an earlier one provides, as `[ids]` uses `[coord]` —
//! lets it [`provide`](Resource::provide) the handles components may ask for, runs it on a task of its own under the restart policy
//! (connecting, keeping a session alive), counts it in `/ready`, and stops it after every
//! pipeline of the process has drained. Components find the handles through
//! [`BuildContext::resources`](crate::BuildContext); a component never opens its own client
//! when a shared one is configured.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::component::{BoxFuture, BuildContext, Finding, Validate};
use crate::error::{Error, ErrorKind};
use crate::health::ReadyFlag;
use crate::shutdown::Shutdown;

/// A resource section's config.
pub trait ResourceConfig: Validate + Debug + Send + Sync + 'static {
    /// Builds the resource. No I/O: connect in [`Resource::run`].
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Resource>, Error>;

    /// Whether the resource provides a [`Leadership`](crate::leadership::Leadership), which
    /// `[pipeline] leader` needs; checked when the config is loaded.
    fn provides_leadership(&self) -> bool {
        false
    }

    /// Checks the servers the resource would use (`sluice check`); none by default.
    fn check(&self) -> BoxFuture<'_, Vec<Finding>> {
        Box::pin(std::future::ready(Vec::new()))
    }
}

/// A client shared by the components of a process.
pub trait Resource: Send + Sync + 'static {
    /// Runs for as long as the process does: connects, keeps sessions alive, and marks `cx`
    /// ready while usable. Returns once [`ResourceContext::shutdown`] fires, after releasing
    /// what it holds on servers (leases, sessions). A retryable error restarts it after the
    /// backoff; any other stops the process.
    fn run<'a>(&'a self, cx: &'a mut ResourceContext) -> BoxFuture<'a, Result<(), Error>>;

    /// Hands out what components may ask for, by type (itself, and any trait it implements
    /// for the engine, such as `dyn Leadership`).
    fn provide(self: Arc<Self>, provider: &mut Provider);

    /// Routes it serves on the API server (`[api]`), beside the engine's own; none by default.
    /// Paths must not overlap another resource's.
    fn routes(self: Arc<Self>) -> Option<axum::Router> {
        None
    }
}

/// What a running resource uses.
pub struct ResourceContext {
    pub(crate) name: Arc<str>,
    pub(crate) ready: ReadyFlag,
    pub(crate) shutdown: Shutdown,
    pub(crate) api: Option<SocketAddr>,
}

impl ResourceContext {
    /// The section's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks the resource usable (connected) or not, for `/ready`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(ready);
    }

    /// Fires when the process stops, after its pipelines have drained.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The address the process's API server listens on (the first, with several), if it
    /// serves one: where others can read its `/status`.
    pub fn api_address(&self) -> Option<SocketAddr> {
        self.api
    }
}

/// Collects the handles resources provide; becomes [`Resources`].
#[derive(Default)]
pub struct Provider {
    by_type: HashMap<TypeId, (&'static str, Handle)>,
    duplicates: Vec<&'static str>,
}

impl Provider {
    /// Offers `value` to components that ask for a `T`. A type offered by two resources is a
    /// configuration error (components could not tell which one they get).
    pub fn insert<T: ?Sized + Send + Sync + 'static>(&mut self, value: Arc<T>) {
        let name = std::any::type_name::<T>();
        if self
            .by_type
            .insert(TypeId::of::<T>(), (name, Arc::new(value)))
            .is_some()
        {
            self.duplicates.push(name);
        }
    }

    /// What has been provided so far, for a resource built after the ones that provided it.
    pub(crate) fn so_far(&self) -> Resources {
        Resources {
            by_type: Arc::new(
                self.by_type
                    .iter()
                    .map(|(id, (_, value))| (*id, Arc::clone(value)))
                    .collect(),
            ),
        }
    }

    pub(crate) fn finish(self) -> Result<Resources, Error> {
        if !self.duplicates.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "two resource sections provide the same thing ({}): keep one",
                    self.duplicates.join(", ")
                ),
            ));
        }
        Ok(Resources {
            by_type: Arc::new(
                self.by_type
                    .into_iter()
                    .map(|(id, (_, value))| (id, value))
                    .collect(),
            ),
        })
    }
}

/// The handles the process's resources provide, by type.
#[derive(Clone, Default)]
pub struct Resources {
    by_type: Arc<HashMap<TypeId, Handle>>,
}

/// One provided handle: an `Arc<T>`, type-erased.
type Handle = Arc<dyn Any + Send + Sync>;

impl Resources {
    /// The `T` a resource provides, if any.
    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.by_type
            .get(&TypeId::of::<T>())?
            .downcast_ref::<Arc<T>>()
            .cloned()
    }

    /// The `T` a resource provides, or a configuration error saying that `needed_by` needs the
    /// section `section`.
    pub fn require<T: ?Sized + Send + Sync + 'static>(
        &self,
        needed_by: &str,
        section: &str,
    ) -> Result<Arc<T>, Error> {
        self.get::<T>().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!("{needed_by} needs a [{section}] section, and the config has none"),
            )
        })
    }
}

impl Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resources({} handles)", self.by_type.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Greeter: Send + Sync {
        fn greet(&self) -> &'static str;
    }
    struct English;
    impl Greeter for English {
        fn greet(&self) -> &'static str {
            "hello"
        }
    }

    #[test]
    fn handles_are_found_by_type_including_trait_objects() {
        let mut provider = Provider::default();
        provider.insert::<dyn Greeter>(Arc::new(English));
        provider.insert(Arc::new(42u32));
        let resources = provider.finish().unwrap();
        assert_eq!(resources.get::<dyn Greeter>().unwrap().greet(), "hello");
        assert_eq!(*resources.get::<u32>().unwrap(), 42);
        assert!(resources.get::<u64>().is_none());
        let missing = resources
            .require::<u64>("sources.watch", "coord")
            .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "sources.watch needs a [coord] section, and the config has none"
        );
    }

    #[test]
    fn a_type_provided_twice_is_refused() {
        let mut provider = Provider::default();
        provider.insert(Arc::new(1u32));
        provider.insert(Arc::new(2u32));
        let error = provider.finish().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        assert!(error.to_string().contains("u32"), "{error}");
    }
}
