//! Running commands and collecting what they print.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use crate::error::{or_panic, LabError};

/// Runs `sh -c command` (stdin closed); returns its stdout, or an error with everything it
/// printed if it fails.
pub fn try_sh(command: &str) -> Result<String, LabError> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .map_err(|source| LabError::Start {
            command: command.to_owned(),
            source,
        })?;
    stdout_of(command, output)
}

/// [`try_sh`], panicking with the error.
pub fn sh(command: &str) -> String {
    or_panic(try_sh(command))
}

/// Runs `command` (stdin closed); its stdout, or an error with what it printed.
pub(crate) fn run(command: &mut Command) -> Result<String, LabError> {
    let line = display(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Start {
            command: line.clone(),
            source,
        })?;
    stdout_of(&line, output)
}

/// Runs `command` with `input` on its stdin; its stdout, or an error with what it printed.
pub(crate) fn run_with_input(command: &mut Command, input: &str) -> Result<String, LabError> {
    let line = display(command);
    let start = |source| LabError::Start {
        command: line.clone(),
        source,
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(start)?;
    // Dropped at the end of the statement: ip sees the end of its input.
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .map_err(start)?;
    let output = child.wait_with_output().map_err(start)?;
    stdout_of(&line, output)
}

/// The stdout of a finished command, or [`LabError::Failed`] with all of its output.
fn stdout_of(command: &str, output: Output) -> Result<String, LabError> {
    if !output.status.success() {
        return Err(LabError::Failed {
            command: command.to_owned(),
            status: output.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The command line, for messages.
pub(crate) fn display(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
