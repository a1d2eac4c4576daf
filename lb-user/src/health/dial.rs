//! How a check connects: straight to an address, or as a VIP-path check (a marked socket,
//! perhaps bound to a source address, see [`crate::check_paths`]).

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// Where and how a check connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dial {
    /// The address and health port.
    pub addr: SocketAddr,
    /// The socket's mark (`SO_MARK`).
    pub mark: Option<u32>,
    /// The address to bind to.
    pub source: Option<IpAddr>,
}

impl From<SocketAddr> for Dial {
    fn from(addr: SocketAddr) -> Self {
        Self::direct(addr)
    }
}

impl Dial {
    /// Straight to `addr`, as the kernel routes it.
    pub fn direct(addr: SocketAddr) -> Self {
        Self {
            addr,
            mark: None,
            source: None,
        }
    }

    /// Opens the connection.
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        if self.mark.is_none() && self.source.is_none() {
            return TcpStream::connect(self.addr).await;
        }
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(mark) = self.mark {
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Mark, &mark)?;
        }
        if let Some(source) = self.source {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        socket.connect(self.addr).await
    }
}
