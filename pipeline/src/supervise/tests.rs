//! The restart policy and the leadership gate, run through the runtime with the components
//! of [`testing`](crate::testing).

use crate::ack::Outcome;
use crate::component::Refused;
use crate::runtime::{RunError, run, try_build};
use crate::shutdown::ShutdownTrigger;
use crate::testing::{config, ids, probe};

#[tokio::test]
async fn a_sink_that_fails_is_started_again_and_delivers_what_it_held() {
    let config = config(
        "sink-restart",
        "",
        r#"
        [sources.gen]
        type = "count"
        probe = "sink-restart"
        count = 20
        [sinks.out]
        type = "hold"
        inputs = ["gen"]
        probe = "sink-restart"
        fail_after = 5
        "#,
    );
    run(&config, ShutdownTrigger::new().subscribe())
        .await
        .unwrap();
    let probe = probe("sink-restart");
    assert_eq!(
        *probe.starts.lock().unwrap(),
        2,
        "started, failed, started again"
    );
    assert_eq!(probe.delivered(), ids(1..=20), "each once, in order");
    assert_eq!(probe.runs(), [None], "the source never had to read again");
    assert_eq!(*probe.checkpoint.lock().unwrap(), Some(20));
}

#[tokio::test]
async fn events_that_fail_downstream_are_read_again_from_the_checkpoint() {
    let config = config(
        "rewind",
        "",
        r#"
        [sources.gen]
        type = "count"
        probe = "rewind"
        count = 30
        [transforms.lookup]
        type = "flaky"
        inputs = ["gen"]
        probe = "rewind"
        fail_batches = 1
        [sinks.out]
        type = "hold"
        inputs = ["lookup"]
        probe = "rewind"
        "#,
    );
    run(&config, ShutdownTrigger::new().subscribe())
        .await
        .unwrap();
    let probe = probe("rewind");
    let runs = probe.runs();
    assert_eq!(runs.len(), 2, "a second run after the failure: {runs:?}");
    assert_eq!(
        runs[1], None,
        "the first event failed, so nothing was checkpointed"
    );
    // What passed the transform after its restart was delivered before the source stopped;
    // then the second run delivered everything from the first (failed) event on.
    let delivered = probe.delivered();
    let first_pass = delivered.len() - 30;
    assert_eq!(
        delivered[..first_pass],
        ids(2..=first_pass as u64 + 1)[..],
        "{delivered:?}"
    );
    assert_eq!(delivered[first_pass..], ids(1..=30)[..], "{delivered:?}");
    assert_eq!(*probe.checkpoint.lock().unwrap(), Some(30));
    assert_eq!(
        *probe.starts.lock().unwrap(),
        3,
        "transform started, restarted; sink started once"
    );
}

#[tokio::test]
async fn an_error_that_retrying_cannot_fix_stops_the_pipeline_and_holds_the_checkpoint() {
    let config = config(
        "fatal",
        "",
        r#"
        [sources.gen]
        type = "count"
        probe = "fatal"
        count = 0
        [sinks.out]
        type = "hold"
        inputs = ["gen"]
        probe = "fatal"
        fail_after = 3
        fatal = true
        "#,
    );
    let error = run(&config, ShutdownTrigger::new().subscribe())
        .await
        .unwrap_err();
    let RunError::Failed { failures } = &error else {
        panic!("{error}")
    };
    assert_eq!(failures.len(), 1, "{error}");
    assert_eq!(failures[0].0, "out");
    let probe = probe("fatal");
    assert_eq!(
        probe.delivered(),
        ids(1..=2),
        "the third event was held when it failed"
    );
    assert_eq!(
        *probe.checkpoint.lock().unwrap(),
        Some(2),
        "the checkpoint stops before the event the sink held"
    );
}

#[tokio::test]
async fn sources_run_only_while_leading_and_stop_drained_when_the_term_ends() {
    let config = config(
        "gate",
        r#"leader = "relay""#,
        r#"
        [elections]
        probe = "gate"
        [sources.gen]
        type = "count"
        probe = "gate"
        count = 0
        [sinks.out]
        type = "hold"
        inputs = ["gen"]
        probe = "gate"
        "#,
    );
    let probe = probe("gate");
    let trigger = ShutdownTrigger::new();
    let running = tokio::spawn({
        let shutdown = trigger.subscribe();
        async move { run(&config, shutdown).await }
    });
    probe
        .wait("the first term's run", |p| p.delivered().len() >= 10)
        .await;
    assert_eq!(probe.runs(), [None]);

    // The term ends: the source stops, drains and records; the runtime campaigns again and
    // the next term's run starts after the recorded checkpoint.
    let granted = probe.leadership.granted();
    tokio::pin!(granted);
    granted.as_mut().enable();
    probe.leadership.end_term();
    granted.await;
    probe
        .wait("the second term's run", |p| p.runs().len() == 2)
        .await;
    let runs = probe.runs();
    let first_checkpoint = runs[1].expect("the first run recorded a checkpoint");
    let delivered_then = probe.delivered();
    assert_eq!(
        delivered_then[..first_checkpoint as usize],
        ids(1..=first_checkpoint)[..],
        "the checkpoint is everything delivered in the first term"
    );
    probe
        .wait("events of the second term", |p| {
            p.delivered().len() >= first_checkpoint as usize + 10
        })
        .await;

    trigger.trigger();
    running.await.unwrap().unwrap();
    let delivered = probe.delivered();
    let last = probe.checkpoint.lock().unwrap().unwrap();
    assert_eq!(
        delivered,
        ids(1..=last),
        "no event twice, none missing: {delivered:?}"
    );
}

#[tokio::test]
async fn receipts_tell_each_request_its_own_outcome() {
    let config = config(
        "receipts",
        "",
        r#"
        [quarantine]
        sink = "dlq"
        [sources.api]
        type = "requests"
        probe = "receipts"
        ids = ["ok-1", "drop-2", "bad-3", "ok-4"]
        [transforms.sieve]
        type = "flaky"
        inputs = ["api"]
        probe = "receipts"
        fail_batches = 0
        drop_prefix = "drop"
        [sinks.out]
        type = "hold"
        inputs = ["sieve"]
        probe = "receipts"
        reject_prefix = "bad"
        [sinks.dlq]
        type = "hold"
        probe = "receipts-dlq"
        "#,
    );
    run(&config, ShutdownTrigger::new().subscribe())
        .await
        .unwrap();
    let mut outcomes = probe("receipts").outcomes.lock().unwrap().clone();
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        outcomes,
        [
            (
                "bad-3".to_owned(),
                Ok(Outcome::Quarantined("refused by the test".into()))
            ),
            ("drop-2".to_owned(), Ok(Outcome::Dropped)),
            ("ok-1".to_owned(), Ok(Outcome::Delivered)),
            ("ok-4".to_owned(), Ok(Outcome::Delivered)),
        ]
    );
    assert_eq!(probe("receipts-dlq").delivered(), ["bad-3"]);
}

#[tokio::test]
async fn an_emitter_refuses_at_once_when_the_budget_is_full() {
    let config = config(
        "refused",
        "max_in_flight_events = 1",
        r#"
        [sources.api]
        type = "requests"
        probe = "refused"
        ids = ["first", "second"]
        [sinks.out]
        type = "hold"
        inputs = ["api"]
        probe = "refused"
        hold = true
        "#,
    );
    run(&config, ShutdownTrigger::new().subscribe())
        .await
        .unwrap();
    let outcomes = probe("refused").outcomes.lock().unwrap().clone();
    assert_eq!(
        outcomes,
        [
            ("second".to_owned(), Err(Refused::Full)),
            ("first".to_owned(), Ok(Outcome::Delivered)),
        ],
        "the second request was refused while the first was held"
    );
}

#[test]
fn a_resource_is_built_after_those_registered_before_it_and_sees_what_they_provide() {
    let sinks = "[sources.s]\ntype = \"count\"\nprobe = \"order\"\ncount = 1\n\
                 [sinks.out]\ntype = \"hold\"\nprobe = \"order\"\ninputs = [\"s\"]\n";
    let both = config(
        "order",
        "",
        &format!("{sinks}[elections]\nprobe = \"order\"\n[audit]\n"),
    );
    if let Err(error) = try_build(&both) {
        panic!(
            "[audit] sees what [elections] provides: {}",
            crate::error::chain(&error)
        );
    }
    let alone = config("order-alone", "", &format!("{sinks}[audit]\n"));
    let Err(error) = try_build(&alone) else {
        panic!("[audit] without [elections] was built");
    };
    assert!(
        crate::error::chain(&error).contains("[audit] needs a [elections] section"),
        "{error}"
    );
}
