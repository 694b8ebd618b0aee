//! Test support (compiled for tests only): a tiny HTTP/1.1 server on
//! 127.0.0.1 that serves fixed replies by path, including faulty ones (an
//! error status, a redirect, a body cut short, a body that stalls).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this body.
    Body(Vec<u8>),
    /// This status, empty body.
    Status(u16),
    /// 302 to this Location.
    Redirect(String),
    /// Announces the body's full length, sends only the first `sent` bytes
    /// and closes.
    Truncated { body: Vec<u8>, sent: usize },
    /// Announces the full length, sends the first `sent` bytes, then sends
    /// nothing more until the server is dropped.
    Stall { body: Vec<u8>, sent: usize },
}

pub struct TestServer {
    pub port: u16,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    requests: Arc<Mutex<Vec<String>>>,
    // Dropped with the server: stalled replies end.
    _stop: Sender<()>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let (r, q) = (Arc::clone(&routes), Arc::clone(&requests));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                // The server was dropped (its connect woke us).
                if let Err(crossbeam_channel::TryRecvError::Disconnected) = stopped.try_recv() {
                    return;
                }
                let (r, q, stopped) = (Arc::clone(&r), Arc::clone(&q), stopped.clone());
                std::thread::spawn(move || serve(stream, &r, &q, &stopped));
            }
        });
        TestServer { port, routes, requests, _stop: stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn set(&self, path: &str, reply: Reply) {
        self.routes.lock().unwrap().insert(path.to_owned(), reply);
    }

    /// The paths requested so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Disconnect the stop channel first, then wake the accept loop so
        // it sees that.
        let (dead, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self._stop, dead));
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    mut stream: TcpStream,
    routes: &Mutex<HashMap<String, Reply>>,
    requests: &Mutex<Vec<String>>,
    stopped: &Receiver<()>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" || header == "\n" => break,
            Ok(_) => {}
        }
    }
    requests.lock().unwrap().push(path.clone());
    let reply = routes.lock().unwrap().get(&path).cloned().unwrap_or(Reply::Status(404));
    let head = |status: &str, length: usize, extra: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n{extra}\r\n")
    };
    let _ = match reply {
        Reply::Body(body) => {
            stream.write_all(head("200 OK", body.len(), "").as_bytes()).and_then(|()| stream.write_all(&body))
        }
        Reply::Status(code) => {
            let text = match code {
                404 => "Not Found",
                500 => "Internal Server Error",
                _ => "Status",
            };
            stream.write_all(head(&format!("{code} {text}"), 0, "").as_bytes())
        }
        Reply::Redirect(location) => {
            stream.write_all(head("302 Found", 0, &format!("Location: {location}\r\n")).as_bytes())
        }
        Reply::Truncated { body, sent } => stream
            .write_all(head("200 OK", body.len(), "").as_bytes())
            .and_then(|()| stream.write_all(&body[..sent])),
        Reply::Stall { body, sent } => {
            let written = stream
                .write_all(head("200 OK", body.len(), "").as_bytes())
                .and_then(|()| stream.write_all(&body[..sent]))
                .and_then(|()| stream.flush());
            // Holds the connection open, sending nothing, until the server
            // is dropped.
            let _ = stopped.recv();
            written
        }
    };
    let _ = stream.flush();
}
