//! Number, duration and address formatting shared by the human outputs.

use std::time::Duration;

/// A number with an SI suffix: 1234567 → "1.2M".
pub fn si(value: f64) -> String {
    let (scaled, suffix) = if value >= 1e12 {
        (value / 1e12, "T")
    } else if value >= 1e9 {
        (value / 1e9, "G")
    } else if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        return if value.fract() == 0.0 {
            format!("{value}")
        } else {
            format!("{value:.1}")
        };
    };
    format!("{scaled:.1}{suffix}")
}

/// "1.2 M" (with a space before the unit), "12 " for small values.
pub fn si_space(value: f64) -> String {
    let text = si(value);
    match text.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => format!("{} {c}", &text[..text.len() - 1]),
        _ => format!("{text} "),
    }
}

/// `350µs`, `1.2ms`, `4.5s`, `3m20s`, `2h5m`.
pub fn human_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros < 1000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{:.1}ms", micros as f64 / 1000.0)
    } else {
        let seconds = duration.as_secs();
        match seconds {
            0..60 => format!("{:.1}s", duration.as_secs_f64()),
            60..3600 => format!("{}m{}s", seconds / 60, seconds % 60),
            _ => format!("{}h{}m", seconds / 3600, (seconds % 3600) / 60),
        }
    }
}

/// `ADDR:PORT`, with brackets around an IPv6 address.
pub fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// A `--watch` interval: a bare number is seconds, as in `watch -n 1` or `vmstat 1` (`1`,
/// `0.5`); anything else is a humantime duration (`500ms`, `2s`, `1m`). Zero is refused.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Duration::from_secs_f64(seconds),
        Ok(_) => return Err(format!("{text} is not a number of seconds >= 0")),
        Err(_) => humantime::parse_duration(text).map_err(|error| {
            format!("{error}: give seconds (1, 0.5) or a duration (500ms, 2s, 1m)")
        })?,
    };
    if interval.is_zero() {
        return Err("the interval must be longer than 0".into());
    }
    Ok(interval)
}

/// Whether output to a stream may carry terminal escapes (colours, clearing the screen): only
/// when it is a terminal, `NO_COLOR` is unset or empty (<https://no-color.org>) and `TERM` is
/// not `dumb`.
pub fn escapes_allowed(is_terminal: bool) -> bool {
    let set = |name| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    is_terminal && !set("NO_COLOR") && std::env::var_os("TERM").is_none_or(|term| term != "dumb")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1234.0), "1.2k");
        assert_eq!(si(1_234_567.0), "1.2M");
        assert_eq!(si(3_400_000_000.0), "3.4G");
        assert_eq!(si_space(1_200_000.0), "1.2 M");
        assert_eq!(si_space(12.0), "12 ");
        assert_eq!(endpoint("fd00::1", 80), "[fd00::1]:80");
        assert_eq!(human_duration(Duration::from_secs(200)), "3m20s");
    }

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(parse_interval("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        for bad in ["0", "0s", "-1", "1x", "", "inf"] {
            assert!(parse_interval(bad).is_err(), "{bad:?} accepted");
        }
    }
}
