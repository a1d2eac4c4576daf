//! What can go wrong building or using a lab.

use std::{process::ExitStatus, time::Duration};

/// An error of a lab operation; the message names the command or namespace involved.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command could not be started (not installed, not allowed).
    #[error("cannot start `{command}`")]
    Start {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed (stdout, then stderr).
        output: String,
    },
    /// A command succeeded but its output lacks what was asked of it.
    #[error("no {what} in the output of `{command}`: {output:?}")]
    Output {
        /// What was looked for ("MAC", "ifindex").
        what: &'static str,
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// A thread could not enter a namespace.
    #[error("cannot enter network namespace {name}")]
    Enter {
        /// The namespace.
        name: String,
        /// Why (opening its file or `setns`).
        #[source]
        source: std::io::Error,
    },
    /// A setting under /proc/sys could not be written.
    #[error("cannot write {path} in network namespace {namespace}")]
    Sysctl {
        /// The namespace.
        namespace: String,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory of the lab could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file or directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A daemon exited while the lab needed it.
    #[error("{name} exited ({status}); the end of its log {log}:\n{tail}")]
    Exited {
        /// The daemon (`bird in router`).
        name: String,
        /// How it ended.
        status: ExitStatus,
        /// Its log file.
        log: String,
        /// The last lines of its log.
        tail: String,
    },
    /// A wait ended before what it waited for happened.
    #[error("{what}: not within {:.1}s ({detail})", waited.as_secs_f64())]
    Timeout {
        /// What was waited for (`bird in lb1: protocol upstream4 established`).
        what: String,
        /// How long.
        waited: Duration,
        /// What was seen last.
        detail: String,
    },
    /// Links still down when the wait ended.
    #[error("links not up after {}s: {}", timeout.as_secs(), down.join(", "))]
    LinksDown {
        /// How long was waited.
        timeout: Duration,
        /// `<namespace>/<link> <state>` of each link that is not up.
        down: Vec<String>,
    },
}

impl LabError {
    /// The message followed by each cause (`cannot enter network namespace x: No such file or
    /// directory`), for a panic or a log line.
    pub fn full_message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message += &format!(": {cause}");
            source = cause.source();
        }
        message
    }
}

/// The value of `result`, or a panic with the error and its causes: the panicking forms of
/// the `try_` functions, for tests.
pub(crate) fn or_panic<T>(result: Result<T, LabError>) -> T {
    result.unwrap_or_else(|error| panic!("{}", error.full_message()))
}
