//! An upstream that records exactly what reaches it (the raw request head:
//! request-target and every header line, names as sent) and answers `200 ok`;
//! and a raw HTTP/1.1 client that sends exactly the bytes a test writes
//! (reqwest would normalise paths and header names first).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The recording upstream.
pub struct Recorder {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = heads.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket, kept.clone()));
            }
        });
        Self { addr, heads }
    }

    /// Every request head received so far, oldest first.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The request-targets received so far.
    pub fn targets(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|head| head.split(' ').nth(1).unwrap_or("").to_owned())
            .collect()
    }
}

async fn answer(socket: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut socket = BufReader::new(socket);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match socket.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        if socket.read_exact(&mut body).await.is_err() {
            return;
        }
        heads.lock().unwrap().push(head);
        let reply = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
        if socket.get_mut().write_all(reply).await.is_err() {
            return;
        }
    }
}

/// What a raw request got back.
pub struct RawResponse {
    pub status: u16,
    /// The head and the body, as text.
    pub text: String,
}

impl RawResponse {
    /// The values of header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let head = self.text.split("\r\n\r\n").next().unwrap_or("");
        head.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// Sends `GET target` to `addr` with `headers` (each `Name: value`, as
/// written) and `Connection: close`, and reads the whole answer.
pub async fn get(addr: SocketAddr, target: &str, headers: &[&str]) -> RawResponse {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    send(addr, request.as_bytes()).await
}

/// Sends `bytes` to `addr` and reads until the server closes.
pub async fn send(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    RawResponse { status, text }
}
