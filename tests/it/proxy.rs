//! An in-test TCP proxy between the service and PostgreSQL or RabbitMQ, so a test can take a
//! dependency away and give it back without touching the shared servers: `cut()` drops every
//! live connection and refuses new ones (accepted, then closed at once), `restore()` lets
//! connections through again.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    target: SocketAddr,
    open: AtomicBool,
    /// Cancelling it ends every connection of the current generation.
    generation: Mutex<CancellationToken>,
    accepted: AtomicUsize,
}

impl Proxy {
    /// A proxy on a free local port forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let target: SocketAddr = tokio::net::lookup_host(target)
            .await
            .expect("proxy target resolves")
            .next()
            .expect("proxy target has an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
            open: AtomicBool::new(true),
            generation: Mutex::new(CancellationToken::new()),
            accepted: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Self { addr, shared, stop }
    }

    /// Drops every live connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.shared.open.store(false, Ordering::SeqCst);
        let mut generation = self.shared.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.shared.open.store(true, Ordering::SeqCst);
    }

    /// Connections let through so far (a cut connection that reconnected counts twice).
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// `url` with its `host:port` replaced by the proxy's address.
    pub fn rewrite(&self, url: &str, target: &str) -> String {
        assert!(url.contains(target), "{target} is not in the URL");
        url.replacen(target, &self.addr.to_string(), 1)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.generation.lock().unwrap().cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        if !shared.open.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let generation = shared.generation.lock().unwrap().clone();
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(forward(client, shared.target, generation));
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, generation: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = generation.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
    // Dropping both streams closes them: the service sees its connection die.
}
