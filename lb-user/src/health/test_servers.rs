//! Servers on real local sockets for the checks' tests: one that accepts and closes, and an
//! HTTP server whose answer the test sets (and can change), recording every request head.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};

/// A local address nothing listens on.
pub(super) async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Accepts and closes connections until aborted.
pub(super) fn serve_and_close(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        }
    })
}

/// What the HTTP test server does once it has read a request head.
#[derive(Clone, Debug)]
pub(super) enum Answer {
    /// Sends these bytes and closes.
    Send(&'static [u8]),
    /// Waits, then sends these bytes and closes.
    SendAfter(Duration, &'static [u8]),
    /// Closes without a word.
    Close,
}

/// `HTTP/1.1 {status} ...` with an empty body.
pub(super) fn status(code: u16) -> Answer {
    Answer::Send(match code {
        200 => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        204 => b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        404 => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        503 => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        other => panic!("no canned answer for {other}"),
    })
}

/// An HTTP server on a real socket; stopped when dropped.
pub(super) struct HttpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    requests: mpsc::UnboundedReceiver<String>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Listens on `bind` (e.g. `127.0.0.1:0`, `[::1]:0`) and answers every request with
    /// `answer`.
    pub(super) async fn start(bind: &str, answer: Answer) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let (sender, requests) = mpsc::unbounded_channel();
        let shared = answer.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = shared.lock().unwrap().clone();
                tokio::spawn(serve(stream, answer, sender.clone()));
            }
        });
        Self {
            addr,
            answer,
            requests,
            task,
        }
    }

    /// Answers the next requests with `answer`.
    pub(super) fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// The head of the next request received (request line and headers).
    pub(super) async fn request(&mut self) -> String {
        self.requests.recv().await.expect("a request")
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, answer: Answer, requests: mpsc::UnboundedSender<String>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = requests.send(String::from_utf8_lossy(&head).into_owned());
    match answer {
        Answer::Send(bytes) => {
            let _ = stream.write_all(bytes).await;
        }
        Answer::SendAfter(delay, bytes) => {
            tokio::time::sleep(delay).await;
            let _ = stream.write_all(bytes).await;
        }
        Answer::Close => {}
    }
    let _ = stream.shutdown().await;
}
