//! Every component the `sluice` binary ships, by the `type` name configs use. Adding a
//! connector is one line here.

use sluice_connectors::blackhole::BlackholeSinkConfig;
use sluice_connectors::file::FileSinkConfig;
use sluice_connectors::generator::GeneratorConfig;
use sluice_connectors::outbox::OutboxConfig;
use sluice_connectors::postgres::cdc::PostgresCdcConfig;
use sluice_connectors::postgres::poll::PollConfig;
use sluice_connectors::rabbitmq::RabbitmqSinkConfig;
use sluice_connectors::stdout::StdoutSinkConfig;
use sluice_gateway::{CacheInvalidateConfig, GatewayConfig, IngressConfig, RedisConfig};
use sluice_ids::config::IdsConfig;
use sluice_ids::transform::IdTransformConfig;
use sluice_pipeline::Registry;

/// The registry of built-in components.
pub fn registry() -> Registry {
    let mut registry = Registry::new(); // brings the engine's `filter` and `dedupe`
    registry
        .source::<GeneratorConfig>("generator")
        .source::<PostgresCdcConfig>("postgres_cdc")
        .source::<PollConfig>("postgres_poll")
        .source::<GatewayConfig>("gateway")
        .source::<IngressConfig>("http_ingress")
        .transform::<OutboxConfig>("outbox")
        .transform::<IdTransformConfig>("id")
        .sink::<FileSinkConfig>("file")
        .sink::<StdoutSinkConfig>("stdout")
        .sink::<BlackholeSinkConfig>("blackhole")
        .sink::<RabbitmqSinkConfig>("rabbitmq")
        .sink::<CacheInvalidateConfig>("cache_invalidate")
        .resource::<IdsConfig>("ids")
        .resource::<RedisConfig>("redis")
        .quarantine_file(|path| Box::new(FileSinkConfig::new(path)));
    registry
}
