//! HTTP checks: `GET path HTTP/1.1` to the health port, judged by the status line.
//!
//! The request carries `Host` (the configured `host`, else the backend's address, IPv6 in
//! brackets, with `:port` unless it is 80), `User-Agent: lb-health/<version>`, `Accept: */*`
//! and `Connection: close`. The answer's head (status line and headers, at most
//! [`MAX_HEAD`] bytes) is parsed with `httparse`; the body is never read. Connecting,
//! sending and receiving the head must all finish within the timeout.
//!
//! The judgement is a pure function of the bytes received ([`judge`]); the reasons of a
//! failure read:
//!
//! - `HTTP 503 (expected 2xx)`, `HTTP 404 (expected 200, 204)`: a status not accepted
//!   ([`HttpCheck::accepts`]);
//! - `not an HTTP response: "SSH-2.0-OpenSSH_..."`: the first bytes, quoted, printable;
//! - `connection closed before the status line` (or `connection reset by peer before the
//!   status line`);
//! - `timed out after 500ms`, and the connect errors of TCP checks (`connection refused`...).
//!
//! A complete status line decides even when the headers after it are cut short, malformed
//! or longer than the bound.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant,
};

use super::{
    dial::Dial,
    text::{describe_io_error, quote, timed_out},
    CheckResult,
};
use crate::config::HttpCheck;

/// The most bytes of an answer's head read (status line and headers).
pub const MAX_HEAD: usize = 8 * 1024;

/// How many bytes of a garbage answer the reason quotes.
const QUOTED: usize = 16;

/// Headers parsed; a head with more is judged by its status line.
const MAX_HEADERS: usize = 64;

/// Sends `GET path` to `addr` and judges the status line, all within `timeout`; never
/// panics. Passes as `HTTP 200`.
pub async fn check_http(
    dial: impl Into<Dial>,
    check: &HttpCheck,
    timeout: Duration,
) -> CheckResult {
    let start = Instant::now();
    let outcome = tokio::time::timeout(timeout, exchange(dial.into(), check))
        .await
        .unwrap_or_else(|_| Err(timed_out(timeout)));
    let latency = start.elapsed();
    match outcome {
        Ok(status) => CheckResult::passed(latency, format!("HTTP {status}")),
        Err(error) => CheckResult::failure(latency, error),
    }
}

/// Connects, sends the request, reads the head until it can be judged.
async fn exchange(dial: Dial, check: &HttpCheck) -> Result<u16, String> {
    let mut stream = dial.connect().await.map_err(|e| describe_io_error(&e))?;
    stream
        .write_all(request(check, dial.addr).as_bytes())
        .await
        .map_err(|e| format!("{} while sending the request", describe_io_error(&e)))?;
    let mut head = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let end = match stream.read(&mut head[len..]).await {
            Ok(0) => Some("connection closed".to_owned()),
            Ok(n) => {
                len += n;
                None
            }
            Err(e) => Some(describe_io_error(&e)),
        };
        if let Some(outcome) = judge(&head[..len], end.as_deref(), check) {
            return outcome;
        }
    }
}

/// The request for `check` to a backend at `addr`.
pub fn request(check: &HttpCheck, addr: SocketAddr) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lb-health/{}\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        check.path,
        host_header(check, addr),
        env!("CARGO_PKG_VERSION"),
    )
}

/// The `Host` header: the configured host, else the address (IPv6 in brackets) and the port
/// unless it is HTTP's default, 80.
fn host_header(check: &HttpCheck, addr: SocketAddr) -> String {
    if let Some(host) = &check.host {
        return host.clone();
    }
    let address = match addr.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    match addr.port() {
        80 => address,
        port => format!("{address}:{port}"),
    }
}

/// What the first bytes of an answer say: `None` while more are needed, else the accepted
/// status or why the check failed. `end` is why the connection ended (`connection closed`,
/// `connection reset by peer`) when no more bytes will come.
fn judge(head: &[u8], end: Option<&str>, check: &HttpCheck) -> Option<Result<u16, String>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response.parse(head);
    // httparse fills `reason` once the status line is complete (its CRLF read).
    let status = response.code.filter(|_| response.reason.is_some());
    let full = head.len() >= MAX_HEAD;
    match (parsed, status) {
        // A whole head, or a status line followed by headers that are malformed, cut short
        // or too long: the status line decides.
        (Ok(httparse::Status::Complete(_)) | Err(_), Some(status)) => {
            Some(by_status(status, check))
        }
        (Ok(httparse::Status::Partial), Some(status)) if end.is_some() || full => {
            Some(by_status(status, check))
        }
        (Err(_), None) => Some(Err(not_http(head))),
        (Ok(httparse::Status::Partial | httparse::Status::Complete(_)), None) if full => {
            Some(Err(not_http(head)))
        }
        (Ok(httparse::Status::Partial | httparse::Status::Complete(_)), None) => {
            end.map(|end| Err(format!("{end} before the status line")))
        }
        (Ok(httparse::Status::Partial), Some(_)) => None,
    }
}

fn by_status(status: u16, check: &HttpCheck) -> Result<u16, String> {
    if check.accepts(status) {
        return Ok(status);
    }
    let expected = if check.expect.is_empty() {
        "2xx".to_owned()
    } else {
        let codes: Vec<String> = check.expect.iter().map(u16::to_string).collect();
        codes.join(", ")
    };
    Err(format!("HTTP {status} (expected {expected})"))
}

fn not_http(head: &[u8]) -> String {
    format!("not an HTTP response: {}", quote(head, QUOTED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::test_servers::{free_port, status, Answer, HttpServer};

    fn check(expect: &[u16]) -> HttpCheck {
        HttpCheck {
            path: "/healthz".into(),
            host: None,
            expect: expect.to_vec(),
        }
    }

    const TIMEOUT: Duration = Duration::from_millis(500);

    #[test]
    fn request_and_host_header() {
        let v4: SocketAddr = "10.0.0.11:8080".parse().unwrap();
        assert_eq!(
            request(&check(&[]), v4),
            format!(
                "GET /healthz HTTP/1.1\r\nHost: 10.0.0.11:8080\r\nUser-Agent: lb-health/{}\r\n\
                 Accept: */*\r\nConnection: close\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        let http = check(&[]);
        assert_eq!(
            host_header(&http, "10.0.0.11:80".parse().unwrap()),
            "10.0.0.11"
        );
        assert_eq!(
            host_header(&http, "[2001:db8::11]:8080".parse().unwrap()),
            "[2001:db8::11]:8080"
        );
        assert_eq!(
            host_header(&http, "[2001:db8::11]:80".parse().unwrap()),
            "[2001:db8::11]"
        );
        let named = HttpCheck {
            host: Some("www.example.com".into()),
            ..check(&[])
        };
        assert_eq!(host_header(&named, v4), "www.example.com");
    }

    #[test]
    fn judgements() {
        let any = check(&[]);
        let some = check(&[200, 204]);
        let closed = Some("connection closed");
        let judge_any = |head: &[u8], end| judge(head, end, &any);
        assert_eq!(judge_any(b"HTTP/1.1 200 OK\r\n\r\n", None), Some(Ok(200)));
        assert_eq!(
            judge_any(b"HTTP/1.0 299 Fine\r\nA: b\r\n\r\nbody", None),
            Some(Ok(299))
        );
        assert_eq!(
            judge_any(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", None),
            Some(Err("HTTP 503 (expected 2xx)".into()))
        );
        assert_eq!(
            judge(b"HTTP/1.1 404 Not Found\r\n\r\n", None, &some),
            Some(Err("HTTP 404 (expected 200, 204)".into()))
        );
        assert_eq!(
            judge(b"HTTP/1.1 201 Created\r\n\r\n", None, &check(&[200])),
            Some(Err("HTTP 201 (expected 200)".into()))
        );
        assert_eq!(
            judge(b"HTTP/1.1 204 No Content\r\n\r\n", None, &some),
            Some(Ok(204))
        );
        // Incomplete: read more, unless the connection ended.
        for partial in [&b""[..], b"HT", b"HTTP/1.1 20", b"HTTP/1.1 200 OK"] {
            assert_eq!(judge_any(partial, None), None, "{partial:?}");
            assert_eq!(
                judge_any(partial, closed),
                Some(Err("connection closed before the status line".into())),
                "{partial:?}"
            );
        }
        assert_eq!(
            judge_any(b"HTTP/1.1 2", Some("connection reset by peer")),
            Some(Err("connection reset by peer before the status line".into()))
        );
        // A complete status line decides once the connection ends or the bound is reached.
        assert_eq!(judge_any(b"HTTP/1.1 200 OK\r\nServer: x", None), None);
        assert_eq!(
            judge_any(b"HTTP/1.1 200 OK\r\nServer: x", closed),
            Some(Ok(200))
        );
        let mut long = b"HTTP/1.1 503 No\r\nX: ".to_vec();
        long.resize(MAX_HEAD, b'a');
        assert_eq!(
            judge_any(&long, None),
            Some(Err("HTTP 503 (expected 2xx)".into()))
        );
        // ... and headers that are malformed or too many do not hide it.
        assert_eq!(
            judge_any(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", None),
            Some(Ok(200))
        );
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(judge_any(many.as_bytes(), None), Some(Ok(200)));
        // Garbage.
        assert_eq!(
            judge_any(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n", None),
            Some(Err(r#"not an HTTP response: "SSH-2.0-OpenSSH_...""#.into()))
        );
        assert_eq!(
            judge_any(b"hello\n", None),
            Some(Err(r#"not an HTTP response: "hello\n""#.into()))
        );
        assert_eq!(
            judge_any(b"HTTP/2 200\r\n\r\n", None),
            Some(Err(r#"not an HTTP response: "HTTP/2 200\r\n\r\n""#.into()))
        );
        let mut endless = b"HTTP/1.1 200 ".to_vec();
        endless.resize(MAX_HEAD, b'a');
        assert_eq!(
            judge_any(&endless, None),
            Some(Err(r#"not an HTTP response: "HTTP/1.1 200 aaa...""#.into()))
        );
    }

    #[tokio::test]
    async fn passes_on_200_with_the_request_it_should_send() {
        let mut server = HttpServer::start("127.0.0.1:0", status(200)).await;
        let r = check_http(server.addr, &check(&[]), TIMEOUT).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.passed.as_deref(), Some("HTTP 200"));
        assert!(r.describe().starts_with("HTTP 200 in "), "{}", r.describe());
        assert_eq!(server.request().await, request(&check(&[]), server.addr));
        let head = request(&check(&[]), server.addr);
        assert!(head.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", server.addr.port())));
    }

    #[tokio::test]
    async fn fails_on_503_with_its_status() {
        let server = HttpServer::start("127.0.0.1:0", status(503)).await;
        let r = check_http(server.addr, &check(&[]), TIMEOUT).await;
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("HTTP 503 (expected 2xx)"));
        assert_eq!(r.passed, None);
    }

    #[tokio::test]
    async fn a_custom_expect_list_decides() {
        let server = HttpServer::start("127.0.0.1:0", status(204)).await;
        let r = check_http(server.addr, &check(&[200, 204]), TIMEOUT).await;
        assert_eq!(
            (r.ok, r.passed.as_deref()),
            (true, Some("HTTP 204")),
            "{r:?}"
        );
        server.set(status(200));
        let r = check_http(server.addr, &check(&[204]), TIMEOUT).await;
        assert_eq!(r.error.as_deref(), Some("HTTP 200 (expected 204)"));
        server.set(status(404));
        let r = check_http(server.addr, &check(&[200, 204]), TIMEOUT).await;
        assert_eq!(r.error.as_deref(), Some("HTTP 404 (expected 200, 204)"));
        // 404 may be what a backend is expected to say.
        let r = check_http(server.addr, &check(&[404]), TIMEOUT).await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn a_slow_answer_times_out() {
        let timeout = Duration::from_millis(200);
        let answer = Answer::SendAfter(Duration::from_secs(2), b"HTTP/1.1 200 OK\r\n\r\n");
        let mut server = HttpServer::start("127.0.0.1:0", answer).await;
        let r = check_http(server.addr, &check(&[]), timeout).await;
        assert_eq!(r.error.as_deref(), Some("timed out after 200ms"), "{r:?}");
        // The server got the request: it is the answer that was late.
        server.request().await;
        assert!(r.latency >= timeout, "{:?}", r.latency);
        assert!(
            r.latency < timeout + Duration::from_millis(300),
            "{:?}",
            r.latency
        );
        // An answer in time passes.
        server.set(Answer::SendAfter(
            Duration::from_millis(20),
            b"HTTP/1.1 200 OK\r\n\r\n",
        ));
        let r = check_http(server.addr, &check(&[]), timeout).await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn garbage_fails_with_a_quote() {
        let answer = Answer::Send(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n");
        let server = HttpServer::start("127.0.0.1:0", answer).await;
        let r = check_http(server.addr, &check(&[]), TIMEOUT).await;
        assert_eq!(
            r.error.as_deref(),
            Some(r#"not an HTTP response: "SSH-2.0-OpenSSH_...""#)
        );
        server.set(Answer::Send(b"\x00\x01\x02\xff"));
        let r = check_http(server.addr, &check(&[]), TIMEOUT).await;
        assert_eq!(
            r.error.as_deref(),
            Some(r#"not an HTTP response: "\x00\x01\x02\xff""#)
        );
    }

    #[tokio::test]
    async fn a_server_that_closes_early_fails() {
        let server = HttpServer::start("127.0.0.1:0", Answer::Close).await;
        let r = check_http(server.addr, &check(&[]), TIMEOUT).await;
        assert_eq!(
            r.error.as_deref(),
            Some("connection closed before the status line")
        );
        server.set(Answer::Send(b"HTTP/1.1 20"));
        let r = check_http(server.addr, &check(&[]), TIMEOUT).await;
        assert_eq!(
            r.error.as_deref(),
            Some("connection closed before the status line")
        );
        // Closing right after a whole status line is an answer.
        server.set(Answer::Send(b"HTTP/1.0 200 OK\r\n"));
        let r = check_http(server.addr, &check(&[]), TIMEOUT).await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn connect_errors_are_those_of_tcp_checks() {
        let r = check_http(free_port().await, &check(&[]), TIMEOUT).await;
        assert_eq!(r.error.as_deref(), Some("connection refused"));
    }

    #[tokio::test]
    async fn host_header_on_the_wire() {
        // IPv4: address and port.
        let mut v4 = HttpServer::start("127.0.0.1:0", status(200)).await;
        assert!(check_http(v4.addr, &check(&[]), TIMEOUT).await.ok);
        let head = v4.request().await;
        let host = format!("\r\nHost: 127.0.0.1:{}\r\n", v4.addr.port());
        assert!(head.contains(&host), "{head:?}");
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head:?}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head:?}");
        let agent = format!(
            "\r\nUser-Agent: lb-health/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(head.contains(&agent), "{head:?}");
        // IPv6: in brackets.
        let mut v6 = HttpServer::start("[::1]:0", status(200)).await;
        assert!(check_http(v6.addr, &check(&[]), TIMEOUT).await.ok);
        let head = v6.request().await;
        let host = format!("\r\nHost: [::1]:{}\r\n", v6.addr.port());
        assert!(head.contains(&host), "{head:?}");
        // A configured host, as written.
        let named = HttpCheck {
            host: Some("www.example.com".into()),
            ..check(&[])
        };
        assert!(check_http(v6.addr, &named, TIMEOUT).await.ok);
        let head = v6.request().await;
        assert!(head.contains("\r\nHost: www.example.com\r\n"), "{head:?}");
        assert_eq!(head.matches("Host:").count(), 1, "{head:?}");
    }
}
