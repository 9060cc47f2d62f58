//! Accepting connections: TCP_NODELAY on each, a cap on how many are open at once, a deadline
//! for a request's headers, and a graceful stop. A client that opens connections and sends
//! nothing (or half a request) can neither hold them forever nor exhaust file descriptors.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Pending connections the kernel queues before `accept`. The default of tokio's `bind`
/// (128) dropped SYNs under a burst of connections here (each costing the client a 1 s
/// retransmit: 2,000 connections took 9 s to open instead of 0.1 s).
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `host:port` (the first address `host` resolves to).
pub async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let address = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} resolves to no address")))?;
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's own `bind`: a restarted server may reuse the port at once.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How many connections may be open, and how long a client may take to send its headers.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `stopping` turns true, then waits for the open
/// connections to finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut at_limit = false;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors or similar: retrying at once would spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopping.wait_for(|&down| down) => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if !at_limit {
                at_limit = true;
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached: answering new connections 503 until some close (--max-connections)"
                );
            }
            tokio::spawn(refuse(stream));
            continue;
        };
        if at_limit {
            at_limit = false;
            tracing::info!("below the connection limit again: accepting connections");
        }
        // Streams write one small event per token: without TCP_NODELAY, Nagle's algorithm
        // holds each event until the client's delayed ACK (~40 ms on Linux), which
        // `lantern benchmark` showed as a 44 ms TTFT and tokens arriving in bursts.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY on a connection");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Answers a connection over the limit with a 503 and closes it. The request is read first
/// (briefly, and only its first bytes) so that closing does not reset the connection under a
/// client still sending, which would hide the answer.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str =
        r#"{"error":"too many open connections; retry later","error_type":"overloaded"}"#;
    let mut request = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut request)).await;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
