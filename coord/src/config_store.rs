//! The configuration store: texts (pipeline configs) under the backend's
//! [`Layout::config`](crate::backend::Layout::config) keys, read and watched for reloads.

use bytes::Bytes;
use futures::StreamExt;

use crate::backend::{BoxStream, Change, KeyValue};
use crate::coord::Coord;
use crate::error::CoordError;
use crate::follow::Follow;

impl Coord {
    /// The backend's key of configuration `key`.
    async fn config_key(&self, key: &str) -> Result<String, CoordError> {
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(CoordError::Config(format!(
                "configuration key {key:?}: must be non-empty, without control characters"
            )));
        }
        Ok(self.connected().await.layout().config.replace("{key}", key))
    }

    /// Stores `text` as configuration `key` (persistent); returns the write's revision.
    pub async fn put_config(&self, key: &str, text: &str) -> Result<u64, CoordError> {
        let path = self.config_key(key).await?;
        self.connected()
            .await
            .put(&path, Bytes::copy_from_slice(text.as_bytes()), None)
            .await
    }

    /// Configuration `key`, if stored.
    pub async fn get_config(&self, key: &str) -> Result<Option<String>, CoordError> {
        let path = self.config_key(key).await?;
        match self.connected().await.get(&path).await? {
            Some(kv) => text(&kv).map(Some),
            None => Ok(None),
        }
    }

    /// Configuration `key`: its value now (`None` when not stored), then each new value
    /// (`None` when deleted). Writes the backend delivers together count as one, the latest
    /// (a reload only needs the newest text); a value equal to the last one yielded, such as
    /// from a recovery read after a compaction, is not yielded again. Ends after its first
    /// error.
    pub async fn watch_config(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Option<String>, CoordError>>, CoordError> {
        let path = self.config_key(key).await?;
        let mut last: Option<Option<String>> = None;
        let values = self.follow(&path).filter_map(move |item| {
            let next = item.and_then(|item| {
                Ok(match item {
                    Follow::Snapshot { kvs, .. } => {
                        Some(kvs.iter().find(|kv| kv.key == path).map(text).transpose()?)
                    }
                    Follow::Changes(changes) => {
                        match changes.iter().rev().find(|c| c.key() == path) {
                            Some(Change::Put(kv)) => Some(Some(text(kv)?)),
                            Some(Change::Delete { .. }) => Some(None),
                            None => None,
                        }
                    }
                })
            });
            let out = match next {
                Ok(Some(value)) if last.as_ref() != Some(&value) => {
                    last = Some(value.clone());
                    Some(Ok(value))
                }
                Ok(_) => None,
                Err(error) => Some(Err(error)),
            };
            std::future::ready(out)
        });
        Ok(values.boxed())
    }
}

/// A stored configuration as text.
fn text(kv: &KeyValue) -> Result<String, CoordError> {
    String::from_utf8(kv.value.to_vec())
        .map_err(|_| CoordError::Protocol(format!("configuration {} is not UTF-8 text", kv.key)))
}
