//! The etcd client as the backend uses it: every request goes through [`Conn::call`], which
//! maps its errors and tries again, on another member, a request that never left.

use std::future::Future;

use etcd_client::Client;

use super::errors::{never_sent, to_coord};
use crate::error::CoordError;

/// The client, the endpoints (for messages) and how often a request may be tried.
#[derive(Clone)]
pub struct Conn {
    client: Client,
    /// The endpoints, joined, for messages.
    pub endpoints: String,
    /// Tries of a request that could not connect: the client balances over the members
    /// without knowing which are down, so one down member fails a share of the requests
    /// sent to it before they leave; another try likely picks a live member.
    attempts: usize,
}

impl Conn {
    /// Wraps a client of `members` members.
    pub fn new(client: Client, endpoints: String, members: usize) -> Self {
        Conn {
            client,
            endpoints,
            attempts: if members > 1 { 2 * members } else { 1 },
        }
    }

    /// The client, for what must outlive a call (a withdrawal sent from `Drop`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends `request` (given a client of its own), doing `doing` (for messages).
    pub async fn call<T, F, Fut>(&self, doing: &str, mut request: F) -> Result<T, CoordError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 1;
        loop {
            match request(self.client.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(err) if attempt < self.attempts && never_sent(&err) => attempt += 1,
                Err(err) => return Err(to_coord(err, &self.endpoints, doing)),
            }
        }
    }

    /// The error of `doing` (for errors met outside [`Conn::call`], on streams).
    pub fn error(&self, err: etcd_client::Error, doing: &str) -> CoordError {
        to_coord(err, &self.endpoints, doing)
    }
}
