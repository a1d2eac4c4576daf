//! TCP checks: a connection to the health port, closed as soon as it is established, with a
//! reset (`SO_LINGER` 0, as HAProxy closes its checks): no FIN exchange and no `TIME_WAIT`
//! socket per check. At 16,384 checks a second, an orderly close left about a million sockets
//! in `TIME_WAIT` on one side or the other.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    dial::Dial,
    text::{describe_io_error, timed_out},
    CheckResult,
};

/// Connects as `dial` says within `timeout`; never panics. The connection is closed right
/// away. Fails with `connection refused`, `timed out after 500ms`, `no route to host`...
pub async fn check_tcp(dial: impl Into<Dial>, timeout: Duration) -> CheckResult {
    let start = Instant::now();
    match tokio::time::timeout(timeout, dial.into().connect()).await {
        Ok(Ok(stream)) => {
            let latency = start.elapsed();
            // A socket that cannot take the option is closed the orderly way.
            let _ = stream.set_zero_linger();
            drop(stream);
            CheckResult::success(latency)
        }
        Ok(Err(e)) => CheckResult::failure(start.elapsed(), describe_io_error(&e)),
        Err(_) => CheckResult::failure(start.elapsed(), timed_out(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::test_servers::{free_port, serve_and_close};
    use tokio::net::TcpListener;

    #[tokio::test(start_paused = true)]
    async fn check_tcp_outcomes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve_and_close(listener);
        let r = check_tcp(addr, Duration::from_millis(500)).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.error, None);
        assert_eq!(r.passed.as_deref(), Some("connected"));
        server.abort();
        let _ = server.await;

        let r = check_tcp(free_port().await, Duration::from_millis(500)).await;
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("connection refused"));

        // A zero timeout expires before the connection can complete.
        let r = check_tcp(addr, Duration::ZERO).await;
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("timed out after 0ms"));
    }
}
