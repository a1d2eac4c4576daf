//! Showing an error with its causes. Every error type of lb keeps its cause in a `#[source]`
//! field and out of its message, so a chain prints each cause exactly once.

use std::fmt;

/// Displays an error followed by each of its causes, separated by `: ` (what `{:#}` does for an
/// `anyhow::Error`), for logging a typed error.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::datapath::DatapathError;

    /// Each message of the chain appears once: no error repeats its cause in its own text.
    #[track_caller]
    fn assert_no_repeated_cause(error: &(dyn std::error::Error + 'static)) {
        let mut messages = Vec::new();
        let mut next = Some(error);
        while let Some(error) = next {
            messages.push(error.to_string());
            next = error.source();
        }
        for (i, message) in messages.iter().enumerate() {
            for cause in &messages[i + 1..] {
                assert!(
                    !message.contains(cause.as_str()),
                    "{message:?} repeats its cause {cause:?} (chain: {})",
                    Chain(error)
                );
            }
        }
    }

    #[test]
    fn datapath_errors_print_their_cause_once() {
        let errors = [
            DatapathError::Map {
                map: "STATS",
                source: aya::maps::MapError::OutOfBounds {
                    index: 16,
                    max_entries: 16,
                },
            },
            DatapathError::StateDir {
                action: "create the state directory",
                path: PathBuf::from("/sys/fs/bpf/lb"),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            },
            DatapathError::Ring {
                vip: 3,
                source: std::io::Error::other("mmap failed"),
            },
        ];
        for error in &errors {
            assert_no_repeated_cause(error);
        }
        assert_eq!(
            Chain(&errors[0]).to_string(),
            "map STATS: the index is 16 but `max_entries` is 16"
        );
    }

    #[test]
    fn decap_and_interface_errors_print_their_cause_once() {
        let error =
            crate::datapath::DecapError::Interface(crate::interface::InterfaceError::Netlink {
                interface: "eth0".into(),
                source: crate::netlink::NetlinkError::Request {
                    request: crate::netlink::Request::Addresses,
                    source: crate::netlink::ExchangeError::Refused(
                        std::io::Error::from_raw_os_error(libc::EPERM),
                    ),
                },
            });
        assert_no_repeated_cause(&error);
        assert!(Chain(&error).to_string().starts_with(
            "cannot read interface eth0 from the kernel: netlink: reading the interfaces' \
             addresses: the kernel refused: "
        ));
    }

    #[test]
    fn next_hop_errors_print_their_cause_once() {
        let backend = "10.0.0.5".parse().expect("ip");
        let refused = |request| crate::netlink::NetlinkError::Request {
            request,
            source: crate::netlink::ExchangeError::Refused(std::io::Error::from_raw_os_error(
                libc::ENETUNREACH,
            )),
        };
        let errors = [
            crate::nexthop::NextHopError::NoRoute {
                backend,
                source: refused(crate::netlink::Request::RouteTo(backend)),
            },
            crate::nexthop::NextHopError::Netlink {
                backend,
                source: refused(crate::netlink::Request::Resolution {
                    address: backend,
                    ifindex: 3,
                }),
            },
        ];
        for error in &errors {
            assert_no_repeated_cause(error);
        }
        assert!(Chain(&errors[0]).to_string().starts_with(
            "no route to 10.0.0.5: netlink: looking up the route to 10.0.0.5: the kernel refused: "
        ));
    }
}
