//! The `cache_invalidate` sink: deletes the Redis keys rendered from each event's fields (`keys
//! = ["cache:products:{id}"]`, the engine's templates, whose names are looked up in the
//! event's fields first — a CDC row's columns, so `{id}` is the row's `id` column, not the
//! event's id — then as everywhere else: `id`, `key`, `type`, headers), and acknowledges the
//! event once Redis has deleted them.
//! An event that lacks a key's field is quarantined with the reason; a Redis failure is
//! retried (the sink restarts, keeping the events it had not answered).
//!
//! ```toml
//! [sinks.evict]
//! type = "cache_invalidate"
//! inputs = ["products_cdc"]
//! keys = ["cache:products:{id}"]
//! ```

use std::sync::Arc;

use serde::Deserialize;
use sluice_pipeline::component::{BuildContext, DynSink};
use sluice_pipeline::template::Template;
use sluice_pipeline::{
    Error, ErrorKind, Event, FieldError, FieldErrors, Sink, SinkConfig, SinkContext, Text, Validate,
};

use crate::metrics;
use crate::redis::Redis;

/// Config of the `cache_invalidate` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheInvalidateConfig {
    /// Key templates; each event deletes every key they render to.
    pub keys: Vec<String>,
}

impl CacheInvalidateConfig {
    fn templates(&self) -> Result<Vec<Template>, FieldError> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                Template::parse(key)
                    .map_err(|e| FieldError::new(format!("keys[{i}]"), e.to_string()))
            })
            .collect()
    }
}

impl CacheInvalidateConfig {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        if self.keys.is_empty() {
            return Err(FieldError::new("keys", "needs at least one key template"));
        }
        self.templates().map(drop)
    }
}

impl SinkConfig for CacheInvalidateConfig {
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynSink>, Error> {
        metrics::describe();
        let redis = cx
            .resources
            .require::<Redis>(&format!("sinks.{}", cx.id), "redis")?;
        let templates = self
            .templates()
            .map_err(|e| Error::new(ErrorKind::Config, format!("{}: {}", e.path, e.message)))?;
        Ok(Box::new(CacheInvalidate {
            redis,
            templates,
            pending: Vec::new(),
            deleted: ::metrics::counter!(metrics::INVALIDATED, "sink" => cx.id.clone()),
        }))
    }
}

/// The running `cache_invalidate` sink.
pub struct CacheInvalidate {
    redis: Arc<Redis>,
    templates: Vec<Template>,
    /// Events received and not yet answered: kept across restarts.
    pending: Vec<Event>,
    deleted: ::metrics::Counter,
}

impl CacheInvalidate {
    /// Deletes the keys of the pending events, then acknowledges them.
    async fn flush(&mut self, cx: &SinkContext) -> Result<(), Error> {
        let mut keys = Vec::new();
        let mut rejected = Vec::new();
        let mut ready = Vec::with_capacity(self.pending.len());
        for event in self.pending.drain(..) {
            let rendered: Result<Vec<String>, String> = self
                .templates
                .iter()
                .map(|t| {
                    let mut key = String::new();
                    t.render_with(
                        |name| {
                            event
                                .fields
                                .text(name)
                                .or_else(|| event.lookup(name))
                                .map(Text::as_str)
                        },
                        &mut key,
                    )
                    .map(|()| key)
                    .map_err(|missing| missing.to_string())
                })
                .collect();
            match rendered {
                Ok(mut k) => {
                    keys.append(&mut k);
                    ready.push(event);
                }
                Err(reason) => rejected.push((event, Text::from(reason))),
            }
        }
        if !rejected.is_empty() {
            cx.reject(rejected).await;
        }
        if !keys.is_empty() {
            let count = keys.len() as u64;
            let result = self
                .redis
                .run(|mut c| async move {
                    redis::cmd("DEL")
                        .arg(&keys)
                        .query_async::<u64>(&mut c)
                        .await
                })
                .await;
            if let Err(e) = result {
                self.pending = ready;
                cx.set_ready(false);
                return Err(
                    Error::new(ErrorKind::Connect, "deleting cache keys in Redis").with_source(e),
                );
            }
            cx.set_ready(true);
            self.deleted.increment(count);
        }
        for event in ready {
            event.ack();
        }
        Ok(())
    }
}

impl Sink for CacheInvalidate {
    async fn start(&mut self, cx: &mut SinkContext) -> Result<(), Error> {
        self.redis
            .ping()
            .await
            .map_err(|e| Error::new(ErrorKind::Connect, "reaching Redis").with_source(e))?;
        cx.set_ready(true);
        Ok(())
    }

    async fn run(&mut self, cx: &mut SinkContext) -> Result<(), Error> {
        // What a failed run left is answered first.
        self.flush(cx).await?;
        while let Some(batch) = cx.next().await {
            self.pending.extend(batch);
            while let Some(more) = cx.try_next() {
                self.pending.extend(more);
            }
            self.flush(cx).await?;
        }
        Ok(())
    }
}

impl Validate for CacheInvalidateConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}
