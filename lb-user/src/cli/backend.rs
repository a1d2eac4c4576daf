//! `lb backend drain|disable|enable --vip NAME --backend ADDR`: asks the running agent, over its
//! control socket, to change a backend's administrative state.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
};

use crate::{
    control::{AdminCommand, ControlReply, ControlRequest},
    status,
};

/// Sends the request and prints the agent's answer; an error if it refused.
#[expect(
    clippy::wildcard_enum_match_arm,
    reason = "three connect errors get our words, every other kind its own text"
)]
pub fn run(
    state_dir: &Path,
    command: AdminCommand,
    vip: &str,
    backend: IpAddr,
) -> anyhow::Result<()> {
    let socket = status::socket_for(state_dir);
    let mut stream = UnixStream::connect(&socket).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "no agent is running for {} (no control socket at {}): start `lb run`, or pass \
             --state-dir DIR if it uses another state_dir",
            state_dir.display(),
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "the control socket {} is root only: run as root",
            socket.display()
        ),
        _ => anyhow::Error::new(error).context(format!("connecting to {}", socket.display())),
    })?;
    let request = ControlRequest {
        command,
        vip: vip.to_owned(),
        backend,
    };
    let mut line = serde_json::to_string(&request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    let reply: ControlReply = serde_json::from_str(&answer)
        .map_err(|error| anyhow::anyhow!("the agent's answer {answer:?} is not valid: {error}"))?;
    if !reply.ok {
        anyhow::bail!("{}", reply.message);
    }
    println!("{}", reply.message);
    Ok(())
}
