//! The words of check results: latencies, timeouts, socket errors and quoted garbage, short
//! enough for one log line and the `last_check_error` field of `lb status`.

use std::{io, time::Duration};

/// `1.2ms`, `350µs`, `1.50s`.
pub(super) fn fmt_latency(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// A configured duration as written: `500ms`, `2s`, `1500ms`, `250µs`.
pub(super) fn fmt_timeout(d: Duration) -> String {
    if d.is_zero() {
        "0ms".into()
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_nanos().is_multiple_of(1_000) {
        format!("{}µs", d.as_micros())
    } else {
        format!("{d:?}")
    }
}

/// `timed out after 500ms`: the one reason for a check that did not finish in time.
pub(super) fn timed_out(timeout: Duration) -> String {
    format!("timed out after {}", fmt_timeout(timeout))
}

/// Short, human text of a socket error: `connection refused`, `no route to host`,
/// `network unreachable`, `timed out`, else the OS error's text in lower case without its
/// number (`connection reset by peer`).
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "four kinds get our words, every other kind its own text"
)]
pub(super) fn describe_io_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => return "connection refused".into(),
        io::ErrorKind::HostUnreachable => return "no route to host".into(),
        io::ErrorKind::NetworkUnreachable => return "network unreachable".into(),
        io::ErrorKind::TimedOut => return "timed out".into(),
        _ => {}
    }
    // "Connection reset by peer (os error 104)" → "connection reset by peer".
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => &text[..],
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "socket error".into(),
    }
}

/// The first `max` bytes of what a peer sent, quoted and printable (`\r`, `\n`, `\"`,
/// `\x00`...), with `...` inside the quotes when there was more: `"SSH-2.0-OpenSSH_..."`.
pub(super) fn quote(bytes: &[u8], max: usize) -> String {
    let shown = &bytes[..bytes.len().min(max)];
    let more = if bytes.len() > max { "..." } else { "" };
    format!("\"{}{more}\"", shown.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_latency(Duration::from_micros(350)), "350µs");
        assert_eq!(fmt_latency(Duration::from_micros(1234)), "1.2ms");
        assert_eq!(fmt_latency(Duration::from_millis(1500)), "1.50s");
        assert_eq!(fmt_timeout(Duration::from_millis(500)), "500ms");
        assert_eq!(fmt_timeout(Duration::from_secs(2)), "2s");
        assert_eq!(fmt_timeout(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_timeout(Duration::from_micros(250)), "250µs");
        assert_eq!(
            timed_out(Duration::from_millis(500)),
            "timed out after 500ms"
        );
        let reset = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(describe_io_error(&reset), "connection reset by peer");
        let unreach = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(describe_io_error(&unreach), "no route to host");
    }

    #[test]
    fn quotes_are_printable_and_bounded() {
        assert_eq!(
            quote(b"SSH-2.0-OpenSSH_9.2p1\r\n", 16),
            "\"SSH-2.0-OpenSSH_...\""
        );
        assert_eq!(quote(b"hi\r\n", 16), "\"hi\\r\\n\"");
        assert_eq!(quote(b"\x00\xff\"", 16), "\"\\x00\\xff\\\"\"");
        assert_eq!(quote(b"", 16), "\"\"");
    }
}
