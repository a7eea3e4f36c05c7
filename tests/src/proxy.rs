//! TCP proxies between nodes, to partition a cluster of real processes without root.
//!
//! Each node reaches each peer through its own [`Link`]: a loopback listener that copies
//! bytes both ways. Cutting a link holds every byte at the proxy, in both directions and
//! for connections made while cut too, as a network that drops packets does: the
//! callers' requests get no answer until their timeouts. Healing lets the held bytes
//! through, as TCP's retransmissions would once the network is back.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// Whether a link is cut; copiers wait on it while it is.
#[derive(Default)]
struct Gate {
    cut: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, cut: bool) {
        *self.cut.lock().unwrap_or_else(|p| p.into_inner()) = cut;
        self.changed.notify_all();
    }

    /// Returns once the link is not cut, or false when the proxy is stopping.
    fn pass(&self, stop: &AtomicBool) -> bool {
        let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        while *cut {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            cut = self
                .changed
                .wait_timeout(cut, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// One direction of reachability: a listener forwarding to `target`.
pub struct Link {
    pub listen: SocketAddr,
    gate: Arc<Gate>,
    stop: Arc<AtomicBool>,
}

impl Link {
    /// Starts a proxy on a free loopback port that forwards to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let listen = listener.local_addr().expect("proxy address");
        let gate = Arc::new(Gate::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (gate.clone(), stop.clone());
        thread::spawn(move || accept_loop(listener, target, g, s));
        Self { listen, gate, stop }
    }

    /// Holds every byte from now on, until [`Self::heal`].
    pub fn cut(&self) {
        self.gate.set(true);
    }

    pub fn heal(&self) {
        self.gate.set(false);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.gate.set(false);
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, gate: Arc<Gate>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let (gate, stop) = (gate.clone(), stop.clone());
                thread::spawn(move || {
                    // A connection made across a cut waits for the heal before it reaches
                    // the target, like a SYN that is dropped and retried.
                    if !gate.pass(&stop) {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(target) else {
                        return; // the target is down: the client sees its connection close
                    };
                    pipe(client, server, gate, stop);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Copies both ways until either side closes.
fn pipe(client: TcpStream, server: TcpStream, gate: Arc<Gate>, stop: Arc<AtomicBool>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    let (g, st) = (gate.clone(), stop.clone());
    let up = thread::spawn(move || copy(client, server, &g, &st));
    copy(s2, c2, &gate, &stop);
    let _ = up.join();
}

fn copy(mut from: TcpStream, mut to: TcpStream, gate: &Gate, stop: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !gate.pass(stop) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
