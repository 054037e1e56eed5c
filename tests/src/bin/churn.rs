//! Connection churn for `cargo xtask bench`: client threads connect,
//! exchange a few bytes and close first (so TIME_WAIT builds up on the
//! client side, as on real servers' upstream connections), as fast as they
//! can for a fixed time. Servers run in-process. Runs in the bench's own
//! network namespace, on loopback, spreading connections over several
//! 127.0.0.x destinations so the ephemeral ports last.
//!
//! Prints one JSON object: connections made and the seconds it took.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    /// Network namespace to enter (a name under /run/netns)
    #[arg(long)]
    netns: Option<String>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Destinations 127.0.0.1 … 127.0.0.N
    #[arg(long, default_value_t = 8)]
    addrs: u8,
    #[arg(long, default_value_t = 9900)]
    port: u16,
    /// Attach an empty program to the tracepoint for the run (the floor)
    #[arg(long)]
    noop_program: bool,
    /// Stop after this many connections (or at --seconds, whichever is first)
    #[arg(long)]
    connections: Option<u64>,
    /// Rename the client thread before each connection, cycling through this
    /// many names (w0, w1, …): that many workloads for the exporter
    #[arg(long)]
    comms: Option<u32>,
}

const PAYLOAD: &[u8; 16] = b"tcpstate-bench!\n";

fn enter_netns(name: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{name}")).with_context(|| format!("netns {name}"))?;
    // SAFETY: valid fd; called before any thread starts.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

fn serve(listener: TcpListener, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut conn, _)) = listener.accept() else { continue };
        // Request, response, then wait for the client's FIN and close.
        if conn.read_exact(&mut buf[..PAYLOAD.len()]).is_ok() && conn.write_all(PAYLOAD).is_ok() {
            let _ = conn.read(&mut buf);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(ns) = &cli.netns {
        enter_netns(ns)?;
    }
    let _noop = if cli.noop_program { Some(tcpstate::source::tracer::attach_noop()?) } else { None };
    let stop = Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, cli.port)).context("bind")?;
    // Accepting wakes up periodically so the servers can stop.
    socket2::SockRef::from(&listener).set_read_timeout(Some(Duration::from_millis(100)))?;
    let servers: Vec<_> = (0..cli.threads)
        .map(|_| {
            let (l, stop) = (listener.try_clone().expect("clone listener"), stop.clone());
            thread::spawn(move || serve(l, stop))
        })
        .collect();

    let made = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(cli.seconds);
    let clients: Vec<_> = (0..cli.threads)
        .map(|t| {
            let (made, failed, addrs, port) = (made.clone(), failed.clone(), cli.addrs, cli.port);
            let limit = cli.connections.unwrap_or(u64::MAX);
            let comms = cli.comms;
            thread::spawn(move || {
                let mut buf = [0u8; 16];
                let mut i = t;
                while Instant::now() < deadline && made.load(Ordering::Relaxed) < limit {
                    let dst =
                        SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1 + (i % addrs as usize) as u8), port));
                    i += 1;
                    if let Some(n) = comms {
                        let name = std::ffi::CString::new(format!("w{}", i % n as usize)).unwrap_or_default();
                        // SAFETY: a NUL-terminated name of at most 15 bytes.
                        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
                    }
                    let ok = TcpStream::connect_timeout(&dst, Duration::from_secs(1)).and_then(|mut s| {
                        s.write_all(PAYLOAD)?;
                        s.read_exact(&mut buf)
                    });
                    match ok {
                        Ok(()) => made.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    println!(
        "{{\"connections\":{},\"failed\":{},\"seconds\":{seconds:.3}}}",
        made.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}
