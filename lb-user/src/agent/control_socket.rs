//! The agent's control socket (`/run/lb/<state>.sock`, mode 0600): `lb backend drain|disable|
//! enable` send one JSON request line and get one JSON reply line. Only root may ask: the
//! socket's mode keeps others out, and the peer's credentials (`SO_PEERCRED`) are checked too.
//! Requests (`crate::control`) reach the agent's event loop with a way to answer; this module
//! only carries them.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::control::{ControlReply, ControlRequest};

/// Who asked: the peer's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Process id, if the kernel told.
    pub pid: Option<i32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "uid {} pid {pid}", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// A request waiting for the agent.
pub struct Pending {
    /// The request.
    pub request: ControlRequest,
    /// Who sent it.
    pub peer: Peer,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ControlReply>,
}

/// The listening socket; its file is removed on drop.
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` (replacing a stale socket file) and hands every root request over.
pub fn listen(path: &Path) -> std::io::Result<(ControlSocket, mpsc::Receiver<Pending>)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                if let Err(error) = serve(stream, sender).await {
                    tracing::warn!("control socket: {error}");
                }
            });
        }
    });
    Ok((
        ControlSocket {
            path: path.to_path_buf(),
        },
        receiver,
    ))
}

/// Reads one request, passes it on (root only) and writes the answer.
async fn serve(stream: UnixStream, agent: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let credentials = stream.peer_cred()?;
    let peer = Peer {
        uid: credentials.uid(),
        pid: credentials.pid(),
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = if peer.uid != 0 {
        tracing::warn!("control socket: refused a request from {peer}: root only");
        ControlReply {
            ok: false,
            message: format!("refused: the control socket is root only (you are {peer})"),
        }
    } else {
        match serde_json::from_str::<ControlRequest>(&line) {
            Err(error) => ControlReply {
                ok: false,
                message: format!("not a valid request: {error}"),
            },
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                let pending = Pending {
                    request,
                    peer,
                    reply,
                };
                if agent.send(pending).await.is_err() {
                    return Ok(());
                }
                answer.await.unwrap_or(ControlReply {
                    ok: false,
                    message: "the agent is stopping".into(),
                })
            }
        }
    };
    let mut text = serde_json::to_string(&reply).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}
