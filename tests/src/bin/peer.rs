//! A scriptable TCP peer for the integration tests. It runs in the test's
//! network namespace as its own process, so each side of a connection has a
//! known pid and comm, and closes in a chosen way.
//!
//! Every wait is bounded: socket timeouts, and an alarm that ends the
//! process after `--timeout` seconds whatever happens.

use std::{
    io::{self, BufRead as _, ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use socket2::{Domain, Socket, Type};

#[derive(Parser)]
struct Cli {
    /// Network namespace to enter (a name under /run/netns)
    #[arg(long)]
    netns: Option<String>,
    /// Process name (comm) to take
    #[arg(long)]
    name: Option<String>,
    /// Wait for a line on stdin before starting
    #[arg(long)]
    wait_go: bool,
    /// Hard limit on the whole run, in seconds
    #[arg(long, default_value_t = 30, global = true)]
    timeout: u32,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Accept COUNT connections, one at a time
    Server {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, value_enum)]
        close: CloseMode,
        /// Wait this long before closing (after the peer's FIN, with `second`)
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
    },
    /// Make COUNT connections, one at a time
    Client {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, value_enum)]
        close: CloseMode,
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// Wait this long after each connection before the next
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        /// Connect from this local port every time (SO_REUSEADDR)
        #[arg(long)]
        bind_port: Option<u16>,
        /// Once connected, wait for a line on stdin before closing
        #[arg(long)]
        close_on_go: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CloseMode {
    /// Close at once, before the peer
    First,
    /// Read until the peer's FIN, then close
    Second,
    /// SO_LINGER 0: close with an RST
    Abort,
    /// Shut down while the peer does too, so both FINs cross
    Simultaneous,
    /// Shut down writing (FIN_WAIT2 with the socket still open), then read
    /// until the peer's FIN or reset, then close
    HalfClose,
    /// Read until the peer's FIN, then close with an RST (SO_LINGER 0)
    AbortSecond,
}

fn enter_netns(name: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{name}")).with_context(|| format!("netns {name}"))?;
    // SAFETY: a valid fd; only this (single) thread changes namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

fn set_name(name: &str) {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a valid C string.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
}

fn drain_until_eof(s: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // An RST from an aborting peer also ends the read.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Fill the peer's receive window so our FIN stays queued behind data, shut
/// down, wait for the peer to do the same, then drain: each FIN then
/// reaches a side that is itself in FIN_WAIT1, giving CLOSING.
fn simultaneous(s: &mut TcpStream) -> io::Result<()> {
    s.set_nonblocking(true)?;
    let chunk = [0x55u8; 16384];
    for _ in 0..4096 {
        match s.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    s.shutdown(Shutdown::Write)?;
    sleep(Duration::from_millis(300));
    s.set_nonblocking(false)?;
    drain_until_eof(s)
}

fn finish(mut s: TcpStream, mode: CloseMode, hold: Duration) -> io::Result<()> {
    match mode {
        CloseMode::First => {
            sleep(hold);
            drop(s);
        }
        CloseMode::Second => {
            drain_until_eof(&mut s)?;
            sleep(hold);
            drop(s);
        }
        CloseMode::Abort => {
            sleep(hold);
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
            drop(s);
        }
        CloseMode::Simultaneous => {
            simultaneous(&mut s)?;
            drop(s);
        }
        CloseMode::HalfClose => {
            s.shutdown(Shutdown::Write)?;
            drain_until_eof(&mut s)?;
            drop(s);
        }
        CloseMode::AbortSecond => {
            drain_until_eof(&mut s)?;
            sleep(hold);
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
            drop(s);
        }
    }
    Ok(())
}

fn small_buffers(sock: &Socket) -> io::Result<()> {
    sock.set_send_buffer_size(16384)?;
    sock.set_recv_buffer_size(16384)
}

/// Waits for "go" on stdin.
fn wait_go() -> anyhow::Result<()> {
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        bail!("expected 'go' on stdin");
    }
    Ok(())
}

fn server(
    listen: SocketAddr,
    count: u32,
    mode: CloseMode,
    hold: Duration,
    io_timeout: Duration,
) -> anyhow::Result<()> {
    let sock = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    if matches!(mode, CloseMode::Simultaneous) {
        small_buffers(&sock)?;
    }
    sock.bind(&listen.into())?;
    sock.listen(128)?;
    sock.set_read_timeout(Some(io_timeout))?;
    println!("ready");
    io::stdout().flush()?;
    for _ in 0..count {
        let (conn, _) = sock.accept().context("accept")?;
        let stream: TcpStream = conn.into();
        stream.set_read_timeout(Some(io_timeout))?;
        finish(stream, mode, hold)?;
    }
    Ok(())
}

struct ClientPlan {
    connect: SocketAddr,
    count: u32,
    mode: CloseMode,
    hold: Duration,
    pause: Duration,
    bind_port: Option<u16>,
    close_on_go: bool,
    io_timeout: Duration,
}

fn client(plan: ClientPlan) -> anyhow::Result<()> {
    let ClientPlan { connect, count, mode, hold, pause, bind_port, close_on_go, io_timeout } = plan;
    println!("ready");
    io::stdout().flush()?;
    for _ in 0..count {
        let sock = Socket::new(Domain::for_address(connect), Type::STREAM, None)?;
        if matches!(mode, CloseMode::Simultaneous) {
            small_buffers(&sock)?;
        }
        if let Some(port) = bind_port {
            sock.set_reuse_address(true)?;
            let local = SocketAddr::new(connect.ip(), port);
            sock.bind(&local.into()).context("bind")?;
        }
        sock.connect_timeout(&connect.into(), io_timeout).context("connect")?;
        let stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(io_timeout))?;
        if close_on_go {
            wait_go()?;
        }
        finish(stream, mode, hold)?;
        sleep(pause);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // SAFETY: alarm has no preconditions; SIGALRM's default ends the process.
    unsafe { libc::alarm(cli.timeout) };
    if let Some(ns) = &cli.netns {
        enter_netns(ns)?;
    }
    if let Some(name) = &cli.name {
        set_name(name);
    }
    if cli.wait_go {
        wait_go()?;
    }
    // Socket waits are bounded by the hard limit too (scaled by the tests).
    let io_timeout = Duration::from_secs(cli.timeout.into());
    match cli.role {
        Role::Server { listen, count, close, hold_ms } => {
            server(listen, count, close, Duration::from_millis(hold_ms), io_timeout)
        }
        Role::Client { connect, count, close, hold_ms, pause_ms, bind_port, close_on_go } => {
            client(ClientPlan {
                connect,
                count,
                mode: close,
                hold: Duration::from_millis(hold_ms),
                pause: Duration::from_millis(pause_ms),
                bind_port,
                close_on_go,
                io_timeout,
            })
        }
    }
}
