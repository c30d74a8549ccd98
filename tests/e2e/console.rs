//! The console (`/console`) in a real browser: headless Chromium loads it from a running
//! process of three pipelines (a CDC relay under an election, a generator, a gateway), its
//! figures move while events flow, it shows the relay's lag and leadership, the quarantined
//! events and the gateway's routes and breakers, and a screenshot of it is taken.

use std::net::SocketAddr;

use crate::sluice;
use sluice_tests::webdriver::Browser;
use sluice_tests::{Scratch, TestDb, free_port, http_get, wait_for};

/// The number the console shows in the cell matching `selector` (thousands separators
/// removed), once there is one.
fn shown(browser: &Browser, selector: &str) -> Option<f64> {
    let text = browser.text(selector).ok()??;
    text.replace(',', "").parse().ok()
}

/// The selector of figure `figure` of component `component`.
fn of(component: &str, figure: &str) -> String {
    format!(r#"td[data-component="{component}"][data-figure="{figure}"]"#)
}

#[test]
fn the_console_shows_moving_figures_quarantined_events_and_the_gateway() {
    let dir = Scratch::new("console");
    let db = TestDb::create("console");
    db.execute(
        "CREATE TABLE outbox (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            aggregatetype text NOT NULL,
            aggregateid text NOT NULL,
            type text NOT NULL,
            payload jsonb NOT NULL)",
    );
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Nothing listens there: the payments upstream is down, and its breaker opens.
    let down = free_port();
    // Three pipelines in one process, as the console shows them: a relay under an election, a
    // generator whose filter quarantines one key in ten, and a gateway.
    let pipeline = |name: &str, body: String| {
        let data = dir.join(name);
        let text = format!(
            "[api]\naddress = \"{api}\"\n[pipeline]\ndata_dir = \"{}\"\n{body}",
            data.display()
        );
        dir.write(&format!("{name}.toml"), &text)
    };
    let relay = pipeline(
        "relay",
        format!(
            r#"
            leader = "relay"
            [coord]
            backend = "embedded"
            [sources.outbox]
            type = "postgres_cdc"
            url = "{url}"
            slot = "{slot}"
            publication = "{slot}"
            tables = ["public.outbox"]
            lag_interval = "200ms"
            [transforms.events]
            type = "outbox"
            inputs = ["outbox"]
            [sinks.broker]
            type = "blackhole"
            inputs = ["events"]
            "#,
            url = db.url,
            slot = db.name
        ),
    );
    let orders = pipeline(
        "orders",
        r#"
        [sources.orders]
        type = "generator"
        rate = 200
        keys = 10
        [transforms.checked]
        type = "filter"
        inputs = ["orders"]
        field = "key"
        equals = "key-3"
        action = "quarantine"
        [sinks.delivered]
        type = "blackhole"
        inputs = ["checked"]
        "#
        .to_owned(),
    );
    let gateway_config = pipeline(
        "gateway",
        format!(
            r#"
            [sources.gateway]
            type = "gateway"
            address = "{gateway}"
            [sources.gateway.upstreams.status]
            instances = ["http://{api}"]
            [sources.gateway.upstreams.payments]
            instances = ["http://127.0.0.1:{down}"]
            [sources.gateway.upstreams.payments.breaker]
            failures = 3
            [[sources.gateway.routes]]
            id = "status"
            prefix = "/api/status"
            rewrite_prefix = "/status"
            upstream = "status"
            [[sources.gateway.routes]]
            id = "payments"
            prefix = "/api/payments"
            upstream = "payments"
            [sinks.access_log]
            type = "blackhole"
            inputs = ["gateway"]
            "#
        ),
    );
    let mut running = sluice().spawn_all(&[&relay, &orders, &gateway_config], &[]);
    running.wait_ready(api).unwrap();
    for _ in 0..2 {
        assert_eq!(http_get(gateway, "/api/status").unwrap().0, 200);
    }
    for _ in 0..3 {
        assert_eq!(http_get(gateway, "/api/payments/1").unwrap().0, 502);
    }
    assert_eq!(
        http_get(gateway, "/api/payments/1").unwrap().0,
        503,
        "the breaker opened"
    );

    db.execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
         SELECT 'order', 'order-' || n, 'OrderCreated', jsonb_build_object('n', n)
         FROM generate_series(1, 25) AS n",
    );

    let browser = Browser::start(&dir.join("chromedriver.log"), 1400, 1350).unwrap();
    browser.open(&format!("http://{api}/console")).unwrap();
    let first = wait_for("the console to show events leaving the generator", || {
        shown(&browser, &of("orders", "out_total")).filter(|n| *n > 0.0)
    })
    .unwrap();
    wait_for("the generator's figure to move", || {
        shown(&browser, &of("orders", "out_total")).filter(|n| *n > first)
    })
    .unwrap();
    wait_for("rates between two polls", || {
        let out = shown(&browser, &of("orders", "out_rate"))?;
        let into = shown(&browser, &of("delivered", "in_rate"))?;
        (out > 0.0 && into > 0.0).then_some(())
    })
    .unwrap();
    wait_for("the relay's rows, its lag and its leadership", || {
        let relayed = shown(&browser, &of("broker", "in_total"))?;
        let lag = browser.text(&of("outbox", "lag")).ok()??;
        let role = browser
            .text(r#"section[data-pipeline$="relay.toml"] h2 small"#)
            .ok()??;
        (relayed == 25.0
            && lag.ends_with(" s")
            && lag.contains(" B / ")
            && role.starts_with("leader of relay (fencing token "))
        .then_some(())
    })
    .unwrap();
    wait_for("the filter's quarantined events", || {
        let count = shown(&browser, &of("checked", "quarantined"))?;
        let log = browser.text("#quarantined").ok()??;
        (count > 0.0 && log.contains("filter checked: field key equals \"key-3\"")).then_some(())
    })
    .unwrap();
    let in_flight = browser.text(&of("orders", "in_flight")).unwrap();
    assert!(
        in_flight.is_some_and(|n| n.replace(',', "").parse::<u64>().is_ok()),
        "a source shows its events in flight"
    );
    assert_eq!(
        shown(&browser, r#"td[data-route="status"][data-figure="2xx"]"#),
        Some(2.0)
    );
    assert_eq!(
        browser
            .text(r#"td[data-upstream="payments"][data-figure="breaker"]"#)
            .unwrap()
            .as_deref(),
        Some("open")
    );
    assert_eq!(
        browser
            .text(r#"td[data-upstream="status"][data-figure="breaker"]"#)
            .unwrap()
            .as_deref(),
        Some("closed")
    );

    let png = browser.screenshot().unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a PNG of the page ({} bytes)",
        png.len()
    );
    std::fs::write(dir.join("console.png"), &png).unwrap();
    // How the README's picture is made: `SLUICE_CONSOLE_SCREENSHOT=docs/images/console.png`.
    if let Some(copy) = std::env::var_os("SLUICE_CONSOLE_SCREENSHOT") {
        std::fs::write(copy, &png).unwrap();
    }
    drop(browser);
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}
