//! A loopback TCP proxy the tests put between a client and ZooKeeper, to cut the client off
//! (its connections break, its reconnections are refused) and let it through again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::poll::eventually;

/// A loopback TCP proxy to ZooKeeper that the test can cut: open connections close, new ones
/// are closed on accept.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// Connections being forwarded.
    open: Arc<AtomicUsize>,
}

impl Proxy {
    /// Starts forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let cuts = cut.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let counting = Arc::clone(&open);
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                if *cut.borrow_and_update() {
                    continue;
                }
                let upstream = upstream.clone();
                let open = Arc::clone(&counting);
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(&upstream).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                            _ = cut.wait_for(|c| *c) => {}
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Proxy { addr, cut, open })
    }

    /// Cuts (new connections are closed on accept, open ones close) or lets through again.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// Cuts, and waits until every forwarded connection is closed.
    pub async fn cut_all(&self) -> Result<()> {
        self.set_cut(true);
        eventually(
            "proxied connections closed",
            Duration::from_secs(10),
            || async { Ok((self.open.load(Ordering::SeqCst) == 0).then_some(())) },
        )
        .await
    }
}
