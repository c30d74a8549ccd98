//! Every component the `sluice` binary ships, by the `type` name configs use. Adding a
//! connector is one line here. The gateway's components come with the `gateway` feature (on by
//! default).

use sluice_connectors::blackhole::BlackholeSinkConfig;
use sluice_connectors::file::FileSinkConfig;
use sluice_connectors::generator::GeneratorConfig;
use sluice_connectors::outbox::OutboxConfig;
use sluice_connectors::postgres::cdc::PostgresCdcConfig;
use sluice_connectors::postgres::poll::PollConfig;
use sluice_connectors::rabbitmq::RabbitmqSinkConfig;
use sluice_connectors::stdout::StdoutSinkConfig;
use sluice_coord::CoordConfig;
use sluice_coord::kv_sink::CoordKvConfig;
use sluice_coord::watch_source::CoordWatchConfig;
#[cfg(feature = "gateway")]
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
        .source::<CoordWatchConfig>("coord_watch")
        .transform::<OutboxConfig>("outbox")
        .transform::<IdTransformConfig>("id")
        .sink::<FileSinkConfig>("file")
        .sink::<StdoutSinkConfig>("stdout")
        .sink::<BlackholeSinkConfig>("blackhole")
        .sink::<RabbitmqSinkConfig>("rabbitmq")
        .sink::<CoordKvConfig>("coord_kv")
        // Resources are built in this order: [ids] may lease its worker id through [coord],
        // and the gateway's parts share [redis].
        .resource::<CoordConfig>("coord");
    #[cfg(feature = "gateway")]
    registry
        .source::<GatewayConfig>("gateway")
        .source::<IngressConfig>("http_ingress")
        .sink::<CacheInvalidateConfig>("cache_invalidate")
        .resource::<RedisConfig>("redis");
    registry
        .resource::<IdsConfig>("ids")
        .quarantine_file(|path| Box::new(FileSinkConfig::new(path)));
    registry
}
