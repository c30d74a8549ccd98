//! A GET to a running process's API (`sluice status`, `sluice tap`): HTTP/1.0, so the answer
//! ends with the connection and is never chunked.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The body of a `200` answer to `GET path` from `api` (`host:port`), to be read; any other
/// answer is an error quoting its status line and body.
pub async fn get(api: &str, path: &str) -> Result<BufReader<TcpStream>, String> {
    let mut stream = TcpStream::connect(api)
        .await
        .map_err(|e| format!("cannot connect to {api}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {api}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request to {api}: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .await
        .map_err(|e| format!("cannot read the answer of {api}: {e}"))?;
    let status_line = status_line.trim_end().to_owned();
    loop {
        let mut header = String::new();
        let read = reader
            .read_line(&mut header)
            .await
            .map_err(|e| format!("cannot read the answer of {api}: {e}"))?;
        if read == 0 || header == "\r\n" {
            break;
        }
    }
    if status_line.split_whitespace().nth(1) != Some("200") {
        let mut body = String::new();
        let _ = reader.read_to_string(&mut body).await;
        return Err(format!(
            "GET {path} answered {status_line:?}: {}",
            body.trim_end()
        ));
    }
    Ok(reader)
}
