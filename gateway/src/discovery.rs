//! Upstreams discovered from the coordination registry (`discover = "SERVICE"`): the
//! instances registered under `SERVICE` in `[coord]`, followed with a watch, replace the
//! upstream's instances each time the registry changes, so an instance that deregisters, or
//! whose process dies and whose session expires, stops getting requests at once.
//!
//! An instance's `address` is its base URL when it has a scheme (`https://10.0.0.7:8443`),
//! otherwise `http://` is put in front of it (`10.0.0.7:8080`). An address that is not a usable
//! URL is skipped with a warning. When the watch fails (the coordination service is
//! unreachable), the last list is kept and the watch started again after the pipeline's
//! backoff.

use std::sync::Arc;

use futures::StreamExt;
use sluice_coord::{Coord, Instance};
use sluice_pipeline::Shutdown;
use sluice_pipeline::backoff::Backoff;
use tokio::sync::watch;

use crate::proxy::{self, Upstream};

/// The base URL an instance's registered `address` stands for.
pub fn base_url(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

/// The usable base URLs of `instances`, each unusable one named in a warning.
fn urls(upstream: &str, instances: &[Instance]) -> Vec<String> {
    instances
        .iter()
        .filter_map(|instance| {
            let url = base_url(&instance.address);
            match proxy::Instance::check(&url) {
                Ok(_) => Some(url),
                Err(reason) => {
                    tracing::warn!(upstream, service = %instance.service, instance = %instance.id, "skipping a registered instance: {reason}");
                    None
                }
            }
        })
        .collect()
}

/// Keeps `upstream`'s instances those of `service` until `shutdown`; `found` turns true once
/// the first list has been applied.
pub async fn follow(
    coord: Arc<Coord>,
    service: String,
    upstream: Arc<Upstream>,
    mut backoff: Backoff,
    found: watch::Sender<bool>,
    shutdown: Shutdown,
) {
    let following = async {
        loop {
            let failure = match coord.watch_instances(&service).await {
                Ok(mut lists) => loop {
                    match lists.next().await {
                        Some(Ok(list)) => {
                            let urls = urls(&upstream.name, &list);
                            // Every URL was parsed above, so this cannot refuse one.
                            if let Err(reason) = upstream.replace_instances(&urls) {
                                tracing::warn!(upstream = %upstream.name, "discovered instances refused: {reason}");
                            }
                            tracing::info!(upstream = %upstream.name, %service, instances = urls.len(), "upstream instances discovered");
                            found.send_replace(true);
                            backoff.reset();
                        }
                        Some(Err(error)) => break sluice_pipeline::error::chain(&error),
                        None => break "the watch ended".to_owned(),
                    }
                },
                Err(error) => sluice_pipeline::error::chain(&error),
            };
            let wait = backoff.failed();
            tracing::warn!(upstream = %upstream.name, %service, error = %failure, ?wait, "following the registry failed: keeping the last instances, watching again after a pause");
            tokio::time::sleep(wait).await;
        }
    };
    tokio::select! {
        () = following => {}
        () = shutdown.requested() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_scheme_is_plain_http() {
        assert_eq!(base_url("10.0.0.7:8080"), "http://10.0.0.7:8080");
        assert_eq!(base_url("https://orders:8443/v1"), "https://orders:8443/v1");
        let instance = |address: &str| Instance {
            service: "s".into(),
            id: address.into(),
            address: address.into(),
            metadata: serde_json::Value::Null,
        };
        assert_eq!(
            urls(
                "u",
                &[instance("127.0.0.1:1"), instance("ftp://x"), instance("")]
            ),
            ["http://127.0.0.1:1"]
        );
    }
}
