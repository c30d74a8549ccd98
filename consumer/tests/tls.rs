//! The consumer kit against the local servers' TLS (`scripts/services.sh`): consuming over
//! `amqps://` (with a password and with a client certificate) while writing the inbox over
//! `verify-full`, certificates from another CA refused with the reason, and configs and
//! errors that never show a password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sluice_consumer::{BoxError, Consumer, ConsumerConfig, Handler, Message};
use sluice_tests::rabbitmq::{Vhost, amqps_url, amqps_urls, credentials, rabbitmqctl_patiently};
use sluice_tests::{TestDb, database_tls_url, error_chain, test_ca, wait_for};
use tokio_postgres::Transaction;

/// Records each message in `applied`.
struct Apply;

impl Handler for Apply {
    async fn handle(&mut self, tx: &Transaction<'_>, message: &Message) -> Result<(), BoxError> {
        tx.execute(
            "INSERT INTO applied (message_id) VALUES ($1)",
            &[&message.id],
        )
        .await?;
        Ok(())
    }
}

/// Declares `queue` on `vhost` (over the plain port) and publishes `n` messages to it.
async fn publish(vhost: &Vhost, queue: &str, n: u32) {
    let connection = Connection::connect(vhost.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..n {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default().with_message_id(format!("m{i}").into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _ = connection.close(200, "published".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_over_amqps_into_an_inbox_over_verify_full() {
    let vhost = Vhost::create("consumer-tls").unwrap();
    rabbitmqctl_patiently(&[
        "set_permissions",
        "-p",
        vhost.name(),
        "sluice_cert",
        ".*",
        ".*",
        ".*",
    ])
    .unwrap();
    let (with_password, with_certificate) = amqps_urls(vhost.name());
    let (_, amqp_password) = credentials();
    for (login, amqp_url) in [
        ("password", with_password),
        ("certificate", with_certificate),
    ] {
        let db = TestDb::create("consumer_tls");
        db.execute("CREATE TABLE applied (message_id text PRIMARY KEY)");
        let queue = format!("tls-{login}");
        publish(&vhost, &queue, 300).await;
        let (database_url, db_password) = database_tls_url(&db.name);
        let config = ConsumerConfig::new(&amqp_url, &queue, &database_url);
        let debug = format!("{config:?}");
        assert!(
            debug.contains("amqps://") && debug.contains("sslmode=verify-full"),
            "{debug}"
        );
        // (The broker's test password may equal its user name, which is shown.)
        assert!(
            !debug.contains(&db_password) && !debug.contains(&format!(":{amqp_password}@")),
            "{debug}"
        );
        let consumer = Consumer::connect(config).await.unwrap();
        let stats = consumer.stats();
        let task = tokio::spawn(consumer.run(Apply));
        tokio::task::block_in_place(|| {
            wait_for(&format!("300 messages with a {login}"), || {
                (stats.handled.load(Ordering::Relaxed) >= 300).then_some(())
            })
        })
        .unwrap();
        assert_eq!(
            db.value("SELECT count(*) FROM applied").as_deref(),
            Some("300")
        );
        assert_eq!(
            db.value("SELECT count(*) FROM inbox").as_deref(),
            Some("300")
        );
        // The consumer's session is the role of the TLS URL, encrypted.
        assert_eq!(
            db.value(
                "SELECT bool_and(s.ssl)::text FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.datname = current_database() AND a.application_name = 'sluice'"
            )
            .as_deref(),
            Some("true")
        );
        task.abort();
    }
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused_with_the_reason() {
    let ca = test_ca();
    let untrusted = ca.with_file_name("untrusted-ca.pem");
    let (user, amqp_password) = credentials();
    let db = TestDb::create("consumer_tls_ca");

    let broker = amqps_url(
        &format!("{user}:{amqp_password}@"),
        "localhost",
        "%2f",
        &format!("cacertfile={}", untrusted.display()),
    );
    let error = Consumer::connect(ConsumerConfig::new(&broker, "q", &db.url))
        .await
        .map(drop)
        .unwrap_err();
    let text = error_chain(&error);
    assert!(
        text.contains("not signed by a trusted CA: set cacertfile to the CA that signed it")
            && text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(!text.contains(&format!(":{amqp_password}@")), "{text}");
    assert!(error.is_retryable(), "a broker out of reach may come back");

    let (database_url, db_password) = database_tls_url(&db.name);
    let database_url =
        database_url.replace(&ca.display().to_string(), &untrusted.display().to_string());
    let plain_broker = sluice_tests::rabbitmq::vhost_url("%2f");
    let error = Consumer::connect(ConsumerConfig::new(&plain_broker, "q", &database_url))
        .await
        .map(drop)
        .unwrap_err();
    let text = error_chain(&error);
    assert!(
        text.contains("not signed by a trusted CA: set sslrootcert to the CA that signed it"),
        "{text}"
    );
    assert!(!text.contains(&db_password), "{text}");

    // The broker's certificate names `localhost`, not 127.0.0.1.
    let by_address = amqps_url(
        &format!("{user}:{amqp_password}@"),
        "127.0.0.1",
        "%2f",
        &format!("cacertfile={}", ca.display()),
    );
    let error = Consumer::connect(ConsumerConfig::new(&by_address, "q", &db.url))
        .await
        .map(drop)
        .unwrap_err();
    let text = error_chain(&error);
    assert!(text.contains("does not name the host in the URL"), "{text}");
}

#[tokio::test]
async fn unusable_urls_are_refused_by_field_without_the_password() {
    let db = TestDb::create("consumer_tls_files");
    let broker = amqps_url(
        "guest:s3cr3t-pw@",
        "localhost",
        "%2f",
        "cacertfile=/nonexistent/ca.pem",
    );
    let error = Consumer::connect(ConsumerConfig::new(&broker, "q", &db.url))
        .await
        .map(drop)
        .unwrap_err();
    let text = error_chain(&error);
    assert!(
        text.starts_with("amqp_url: cacertfile=/nonexistent/ca.pem: cannot read the file"),
        "{text}"
    );
    assert!(!error.is_retryable());
    let error = Consumer::connect(ConsumerConfig::new(
        &sluice_tests::rabbitmq::vhost_url("%2f"),
        "q",
        "postgres://app:s3cr3t-pw@localhost/db?sslmode=verify-all",
    ))
    .await
    .map(drop)
    .unwrap_err();
    let text = error_chain(&error);
    assert!(
        text.starts_with("database_url: sslmode=\"verify-all\" is not an sslmode"),
        "{text}"
    );
    assert!(!text.contains("s3cr3t-pw"), "{text}");
}
