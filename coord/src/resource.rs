//! The `[coord]` section as an engine resource: built without I/O, connected by its task
//! (retried with the runtime's backoff while the servers cannot be reached, the pipelines
//! waiting as standbys meanwhile), ready while a session is valid, and providing [`Coord`]
//! and the engine's [`Leadership`] to components.

use std::sync::Arc;

use sluice_pipeline::component::{BoxFuture, BuildContext, Finding};
use sluice_pipeline::error::Error;
use sluice_pipeline::leadership::Leadership;
use sluice_pipeline::resource::{Provider, Resource, ResourceConfig, ResourceContext};

use crate::config::{BackendKind, CoordConfig};
use crate::coord::{Coord, connect_backend};

/// The running `[coord]` resource.
struct CoordResource {
    config: CoordConfig,
    coord: Coord,
}

impl Resource for CoordResource {
    fn run<'a>(&'a self, cx: &'a mut ResourceContext) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if self.coord.backend().is_none() {
                // Before attaching: the node's entry in the cluster shows where its API is.
                self.coord.set_api_address(cx.api_address());
                let connecting = connect_backend(&self.config);
                let backend = tokio::select! {
                    connected = connecting => connected.map_err(|e| {
                        e.into_error(format!("connecting to {}", self.config.describe_endpoints()))
                    })?,
                    () = cx.shutdown().requested() => return Ok(()),
                };
                tracing::info!(backend = %backend.describe(), "coordination connected");
                self.coord.attach(backend);
            }
            loop {
                cx.set_ready(self.coord.is_connected());
                tokio::select! {
                    () = self.coord.session_changed() => {}
                    () = cx.shutdown().requested() => break,
                }
            }
            cx.set_ready(false);
            self.coord.close().await;
            Ok(())
        })
    }

    fn provide(self: Arc<Self>, provider: &mut Provider) {
        provider.insert(Arc::new(self.coord.clone()));
        provider.insert::<dyn Leadership>(Arc::new(self.coord.clone()));
    }
}

impl ResourceConfig for CoordConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Arc<dyn Resource>, Error> {
        Ok(Arc::new(CoordResource {
            config: self.clone(),
            coord: Coord::pending(self.ttl(), self.node()),
        }))
    }

    fn provides_leadership(&self) -> bool {
        true
    }

    fn check(&self) -> BoxFuture<'_, Vec<Finding>> {
        Box::pin(async move {
            if self.backend == BackendKind::Embedded {
                return vec![Finding::ok(
                    "the embedded backend runs in this process: elections and locks hold among its pipelines only",
                )];
            }
            match connect_backend(self).await {
                Ok(backend) => match backend.open_session(self.ttl()).await {
                    Ok((session, granted)) => {
                        let _ = backend.close_session(session).await;
                        vec![Finding::ok(format!(
                            "{} answers; it grants sessions of {granted:?} (asked {})",
                            backend.describe(),
                            self.ttl
                        ))]
                    }
                    Err(error) => vec![Finding::fail(format!(
                        "{} refuses a session: {}",
                        backend.describe(),
                        sluice_pipeline::error::chain(&error)
                    ))],
                },
                Err(error) => vec![Finding::fail(format!(
                    "{}: {}",
                    self.describe_endpoints(),
                    sluice_pipeline::error::chain(&error)
                ))],
            }
        })
    }
}
