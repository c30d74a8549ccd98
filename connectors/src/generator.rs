//! `generator`: a source of synthetic events with deterministic ids and positions, for demos,
//! tests and benchmarks.
//!
//! Event `n` (counting from 1) has position `n`, id `<source id>-<n>`, key `key-<n mod keys>`
//! and a small JSON payload. The checkpoint is kept in the pipeline's data directory, so a
//! restarted generator continues after the last acknowledged event, and one that was killed
//! regenerates (same ids) what was not acknowledged: at-least-once, like every source.
//!
//! ```toml
//! [sources.gen]
//! type = "generator"
//! count = 100000      # stop after this many (omit for an endless stream)
//! rate = 1000         # events per second (omit for as fast as the pipeline takes them)
//! ```

use std::fmt::Write as _;
use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use sluice_pipeline::component::{BuildContext, DynSource};
use sluice_pipeline::pace::Pace;
use sluice_pipeline::{
    Error, Event, FieldError, FieldErrors, HumanDuration, Position, Source, SourceConfig,
    SourceContext, Text, Validate,
};

/// Default for [`GeneratorConfig::batch_size`].
pub const DEFAULT_BATCH_SIZE: usize = 1024;
/// Default for [`GeneratorConfig::keys`].
pub const DEFAULT_KEYS: u64 = 16;
/// Default for [`GeneratorConfig::event_type`].
pub const DEFAULT_EVENT_TYPE: &str = "generated";
/// Default for [`GeneratorConfig::checkpoint_interval`].
pub const DEFAULT_CHECKPOINT_INTERVAL: HumanDuration = HumanDuration::from_secs(1);

/// Config of the `generator` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Stop after the event with this position; unset, generate until shut down.
    pub count: Option<u64>,
    /// Events per second; unset, as fast as the pipeline accepts them.
    pub rate: Option<u64>,
    /// Most events per emitted batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Number of distinct ordering keys (`key-0` … `key-<keys-1>`).
    #[serde(default = "default_keys")]
    pub keys: u64,
    /// The events' type.
    #[serde(default = "default_event_type")]
    pub event_type: String,
    /// Pad each payload to at least this many bytes.
    #[serde(default)]
    pub payload_bytes: usize,
    /// How often to save the checkpoint while running (it is always saved on shutdown).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: HumanDuration,
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn default_keys() -> u64 {
    DEFAULT_KEYS
}
fn default_event_type() -> String {
    DEFAULT_EVENT_TYPE.to_owned()
}
fn default_checkpoint_interval() -> HumanDuration {
    DEFAULT_CHECKPOINT_INTERVAL
}

impl Validate for GeneratorConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        if self.rate == Some(0) {
            return Err(FieldError::new(
                "rate",
                "must be at least 1 event per second (omit it for no limit)",
            )
            .into());
        }
        if self.batch_size == 0 {
            return Err(FieldError::new("batch_size", "must be at least 1").into());
        }
        if self.keys == 0 {
            return Err(FieldError::new("keys", "must be at least 1").into());
        }
        Ok(())
    }
}

impl SourceConfig for GeneratorConfig {
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynSource>, Error> {
        Ok(Box::new(Generator::new(self.clone(), &cx.id)))
    }
}

/// The running `generator` source.
#[derive(Debug)]
pub struct Generator {
    config: GeneratorConfig,
    id_prefix: String,
}

impl Generator {
    /// A generator for source `id`.
    pub fn new(config: GeneratorConfig, id: &str) -> Self {
        Generator {
            config,
            id_prefix: format!("{id}-"),
        }
    }

    /// The events with positions `range`, exactly as the source emits them (for baselines
    /// that measure event construction without the engine).
    pub fn events(&self, range: std::ops::Range<u64>) -> Vec<Event> {
        let mut text = String::new();
        range.map(|seq| self.event(seq, &mut text)).collect()
    }

    fn event(&self, seq: u64, text: &mut String) -> Event {
        text.clear();
        let _ = write!(text, "{}{seq}", self.id_prefix);
        let id = Text::from(text.as_str());
        text.clear();
        let key = seq % self.config.keys;
        let _ = write!(text, r#"{{"seq":{seq},"key":"key-{key}""#);
        // `,"pad":"` and `"}` add 10 bytes around the padding.
        if let Some(pad) = self.config.payload_bytes.checked_sub(text.len() + 10) {
            let _ = write!(text, r#","pad":"{}""#, "x".repeat(pad));
        }
        text.push('}');
        let mut event = Event::new(id, Position(seq), Bytes::copy_from_slice(text.as_bytes()));
        event.event_type = Text::from(self.config.event_type.as_str());
        text.clear();
        let _ = write!(text, "key-{key}");
        event.key = Some(Text::from(text.as_str()));
        event
    }
}

impl Source for Generator {
    async fn run(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        let store = cx.checkpoint_store();
        let restored = store.restore().await?;
        if let Some(position) = restored {
            cx.resume_from(position)?;
            tracing::info!(%position, "resuming after the saved checkpoint");
        }
        cx.set_ready(true);

        let mut next = restored.map_or(1, |p| p.0 + 1);
        let end = self.config.count.unwrap_or(u64::MAX);
        let first = next;
        let pace = self.config.rate.map(Pace::new);
        let shutdown = cx.shutdown().clone();
        let mut save_tick = tokio::time::interval(self.config.checkpoint_interval.get());
        save_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        save_tick.reset();
        while next <= end {
            let mut n = (self.config.batch_size as u64).min(end - next + 1);
            let mut due = None;
            if let Some(pace) = &pace {
                match (first + pace.due_by_now()).saturating_sub(next) {
                    0 => due = Some(pace.due(next - first)),
                    allowed => n = n.min(allowed),
                }
            }
            // Wait for room (or the next event's time) while still saving checkpoints, so a
            // source held back by a slow sink keeps its checkpoint fresh.
            tokio::select! {
                biased;
                () = shutdown.requested() => break,
                _ = save_tick.tick() => {
                    store.record(cx.checkpoint()).await?;
                    continue;
                }
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => continue,
                () = cx.capacity(n as usize), if due.is_none() => {}
            }
            cx.emit(self.events(next..next + n)).await?;
            next += n;
        }
        let checkpoint = cx.drain().await;
        store.record(checkpoint).await?;
        tracing::info!(checkpoint = ?checkpoint.map(|p| p.0), "generator stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(payload_bytes: usize) -> Generator {
        let config: GeneratorConfig =
            sluice_pipeline::config::deserialize(toml::Value::Table(toml::Table::new())).unwrap();
        Generator {
            config: GeneratorConfig {
                payload_bytes,
                ..config
            },
            id_prefix: "gen-".into(),
        }
    }

    #[test]
    fn events_are_deterministic() {
        let g = generator(0);
        let mut text = String::new();
        let e = g.event(17, &mut text);
        assert_eq!(e.id, "gen-17");
        assert_eq!(e.key.as_deref(), Some("key-1"));
        assert_eq!(e.event_type, "generated");
        assert_eq!(e.meta.position, Position(17));
        assert_eq!(&e.payload[..], br#"{"seq":17,"key":"key-1"}"#);
    }

    #[test]
    fn payload_is_padded_and_stays_json() {
        let g = generator(200);
        let e = g.event(3, &mut String::new());
        assert!(e.payload.len() >= 190, "{}", e.payload.len());
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(v["seq"], 3);
    }
}
