//! The floors: what the machine itself needs for the pieces of a relay, in
//! the same run and on the same disk as the sidecar.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

use tungstenite::Message;

use crate::procfs::mono_ns;

/// A minimal WebSocket round trip on loopback: a blocking tungstenite client
/// sends a short text frame, a blocking tungstenite server thread echoes it.
pub struct Echo {
    ws: tungstenite::WebSocket<TcpStream>,
    server: Option<thread::JoinHandle<()>>,
}

impl Echo {
    pub fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
        let addr = listener.local_addr().expect("its address");
        let server = thread::spawn(move || {
            let (tcp, _) = listener.accept().expect("accept");
            tcp.set_nodelay(true).expect("nodelay");
            let mut ws = tungstenite::accept(tcp).expect("server handshake");
            while let Ok(message) = ws.read() {
                if message.is_text() && ws.send(message).is_err() {
                    break;
                }
            }
        });
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), tcp).expect("client handshake");
        let mut echo = Echo { ws, server: Some(server) };
        for _ in 0..50 {
            echo.round_trip(); // warm-up
        }
        echo
    }

    /// One round trip, in ns.
    pub fn round_trip(&mut self) -> u64 {
        let frame = r#"{"type":"task_accepted","task_id":"task-0123456789abcdef","protocol_version":1}"#;
        let start = mono_ns();
        self.ws.send(Message::text(frame)).expect("send");
        while !self.ws.read().expect("echo").is_text() {}
        mono_ns() - start
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

/// Write a file of `bytes` beside `dir`'s queue.json the durable way, and
/// no more: create a temp file, write, fsync, rename, fsync the directory.
/// The file is written as `floor.json` in `dir` and left there.
pub fn atomic_write(dir: &Path, bytes: &[u8]) -> u64 {
    let temp = dir.join(".floor.json.tmp");
    let start = mono_ns();
    let mut file = File::create(&temp).expect("create");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("fsync");
    drop(file);
    fs::rename(&temp, dir.join("floor.json")).expect("rename");
    File::open(dir).and_then(|d| d.sync_all()).expect("fsync the directory");
    mono_ns() - start
}

/// `sh -c true`, from spawn to reaped exit.
pub fn spawn_true() -> u64 {
    let start = mono_ns();
    let status = Command::new("sh").arg("-c").arg("true").status().expect("sh -c true");
    assert!(status.success());
    mono_ns() - start
}

/// `sh -c 'exec <helper> stamp'`, from spawn to the helper's first clock
/// read: exactly the path from the executor's spawn to the agent's stamp.
pub fn spawn_to_helper(helper: &str) -> u64 {
    let start = mono_ns();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {} stamp", shell_quote(helper)))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the helper");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    BufReader::new(stdout).read_line(&mut line).expect("read the stamp");
    let _ = child.wait();
    line.trim().parse::<u64>().expect("a stamp") - start
}

/// Single-quotes `text` for `sh`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
