//! `dynamoctl cluster` with a stand-in node (a small Python program that serves
//! `/readyz` and records its arguments and signals), so the launcher's process handling
//! is tested without building the real node: readiness, output prefixes, a node dying,
//! and orderly shutdown on SIGTERM. Skipped when python3 is missing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FAKE_NODE: &str = r#"#!/usr/bin/env python3
import http.server, os, signal, sys, threading
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1]
data = opt("--data-dir")
with open(os.path.join(data, "args"), "w") as f:
    f.write("\n".join(args))
def on_term(*_):
    open(os.path.join(data, "sigterm"), "w").close()
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
host, port = opt("--http-listen").rsplit(":", 1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
server = http.server.HTTPServer((host, int(port)), H)
print("fake node " + opt("--node-id") + " up", flush=True)
server.serve_forever()
"#;

fn free_port_base(count: u16) -> u16 {
    // An ephemeral port with the next `count` ports free, rounded away from collisions.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = l.local_addr().unwrap().port();
        drop(l);
        if base > 60000 {
            continue;
        }
        let free =
            (1..=count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
}

fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

fn spawn_reader(child: &mut Child, tx: mpsc::Sender<String>) {
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
}

#[test]
fn launches_watches_and_stops_nodes() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-node.py");
    std::fs::write(&fake, FAKE_NODE).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let grpc_base = free_port_base(2);
    // The three ranges (base+1..=base+2) must not overlap.
    let http_base = loop {
        let b = free_port_base(2);
        if b.abs_diff(grpc_base) > 2 {
            break b;
        }
    };
    let peer_base = loop {
        let b = free_port_base(2);
        if b.abs_diff(grpc_base) > 2 && b.abs_diff(http_base) > 2 {
            break b;
        }
    };

    let mut child = Command::new(env!("CARGO_BIN_EXE_dynamoctl"))
        .args([
            "cluster", "--nodes", "2", "--n", "2", "--r", "1", "--w", "1",
        ])
        .args([
            "--base-port",
            &grpc_base.to_string(),
            "--http-base-port",
            &http_base.to_string(),
            "--peer-base-port",
            &peer_base.to_string(),
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--node-bin")
        .arg(&fake)
        .args(["--", "--max-value-bytes", "4096"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    spawn_reader(&mut child, tx);
    let mut seen = Vec::new();
    let ready = wait_for_line(&rx, "is ready:", &mut seen);
    if !ready {
        let _ = child.kill();
        panic!("not ready; output:\n{}", seen.join("\n"));
    }
    assert!(
        seen.iter().any(|l| l == "[node-1] fake node node-1 up"),
        "{seen:#?}"
    );

    let args = std::fs::read_to_string(data.join("node-2/args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    // Members are named by their peer ports; the client port is --listen.
    let members = format!(
        "node-1=127.0.0.1:{},node-2=127.0.0.1:{}",
        peer_base + 1,
        peer_base + 2
    );
    for want in [
        "--node-id",
        "node-2",
        &members,
        &format!("127.0.0.1:{}", grpc_base + 2),
        &format!("127.0.0.1:{}", peer_base + 2),
        "--max-value-bytes",
        "4096",
        &format!("127.0.0.1:{}", http_base + 2),
    ] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }

    // A node dying is reported; the launcher keeps running.
    let pid_of = |id: &str| {
        let status = seen
            .iter()
            .find(|l| l.starts_with(&format!("started {id} (pid ")))
            .unwrap();
        status
            .split("(pid ")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .to_string()
    };
    let node1 = pid_of("node-1");
    Command::new("kill").args(["-9", &node1]).status().unwrap();
    assert!(
        wait_for_line(&rx, "node-1", &mut seen) && wait_for_line(&rx, "unexpectedly", &mut seen),
        "{seen:#?}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "launcher still running"
    );

    // SIGTERM: the remaining node gets SIGTERM and the launcher exits 0.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "launcher did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        Path::new(&data.join("node-2/sigterm")).exists(),
        "node-2 got SIGTERM"
    );
    assert!(
        !data.join("node-1/sigterm").exists(),
        "node-1 was already dead"
    );
}
