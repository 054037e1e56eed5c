//! Sinks: where transitions go once decoded. Each writes into a batch
//! buffer that goes out in one write per drain of the ring buffer.

pub mod census;
pub mod csv;
pub mod dashboard;
pub mod json;
pub mod metrics;
pub mod notices;
pub mod report_text;
pub mod reporter;
pub mod sysctl;
pub mod text;

use std::io::{self, Write};

use bytes::BytesMut;

use crate::model::{
    aggregate::Aggregator,
    counters::{KernelCounters, Readings},
    timewait::TwEvent,
    transition::{Comm, Transition},
};

/// An owner's pid and name as every text view shows them: `-` where the
/// owner (or its pid) is unknown, as in `trace`'s columns.
pub fn owner_columns(pid: Option<u32>, comm: Option<&Comm>) -> (String, String) {
    (pid.map_or("-".into(), |p| p.to_string()), comm.map_or("-".into(), |c| c.to_string()))
}

/// A local port in a table: `ephem` for the ephemeral ports of connected
/// sockets, which the report groups.
pub fn local_port_label(port: Option<u16>) -> String {
    port.map_or("ephem".into(), |p| p.to_string())
}

/// A remote endpoint in a table: `addr:port`, or `addr:*` for accepted
/// connections, whose clients' ports are grouped.
pub fn remote_label(addr: std::net::IpAddr, port: Option<u16>) -> String {
    match port {
        Some(port) => std::net::SocketAddr::new(addr, port).to_string(),
        None if addr.is_ipv6() => format!("[{addr}]:*"),
        None => format!("{addr}:*"),
    }
}

/// How results are written, decided once in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    /// JSON Lines: one object per transition, report or census.
    Json,
    /// `trace` only: comma-separated values with a header line.
    Csv,
}

/// Whether the session goes on after a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

pub trait Sink {
    fn transition(&mut self, t: &Transition) -> io::Result<()>;
    /// Called after each drain of the ring buffer.
    fn flush(&mut self) -> io::Result<()>;
    /// A timewait socket was found, changed substate, or ended.
    fn timewait(&mut self, _e: &TwEvent) -> io::Result<()> {
        Ok(())
    }
    /// The run is over: what the kernel counted (`trace --json` ends with it).
    fn summary(&mut self, _counters: &KernelCounters) -> io::Result<()> {
        Ok(())
    }
    /// Called after every drain, at least every `POLL_INTERVAL`, with a way
    /// to read the counters. Periodic sinks refresh here.
    fn tick(&mut self, _read: &dyn Fn() -> io::Result<Readings>) -> io::Result<Flow> {
        Ok(Flow::Continue)
    }
}

/// What a view asks of the aggregate it shows, after a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewRequest {
    Continue,
    Stop,
    /// Start counting afresh (the `r` key in top); the view itself only
    /// reads the aggregate.
    Reset,
}

/// Presents an aggregate as it grows: periodic reports, or the dashboard.
pub trait AggregateView {
    fn tick(
        &mut self,
        aggregator: &Aggregator,
        read: &dyn Fn() -> io::Result<Readings>,
    ) -> io::Result<ViewRequest>;
}

/// The sink of `stats` and `top`: feeds the aggregator, and lets its view
/// present it on every tick.
pub struct Aggregating<V> {
    pub aggregator: Aggregator,
    pub view: V,
}

impl<V: AggregateView> Sink for Aggregating<V> {
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        self.aggregator.observe(t);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn timewait(&mut self, e: &TwEvent) -> io::Result<()> {
        self.aggregator.observe_timewait(e);
        Ok(())
    }

    fn tick(&mut self, read: &dyn Fn() -> io::Result<Readings>) -> io::Result<Flow> {
        match self.view.tick(&self.aggregator, read)? {
            ViewRequest::Continue => Ok(Flow::Continue),
            ViewRequest::Stop => Ok(Flow::Stop),
            ViewRequest::Reset => {
                self.aggregator.reset();
                Ok(Flow::Continue)
            }
        }
    }
}

/// Collects formatted output and writes it out in one call.
pub struct BatchWriter<W: Write> {
    buf: BytesMut,
    out: W,
}

impl<W: Write> BatchWriter<W> {
    pub fn new(out: W) -> Self {
        Self { buf: BytesMut::with_capacity(64 * 1024), out }
    }

    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Whether writes to `fd` are bound to fail, as far as can be told without
/// writing: `/dev/full`, or a file on a filesystem with no space left. A
/// report collected for minutes must not find that out at the end.
pub fn known_full(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: zeroed stat structs are valid; fstat and fstatvfs only write
    // into them, on a borrowed, open fd.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return false;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFCHR => libc::major(st.st_rdev) == 1 && libc::minor(st.st_rdev) == 7,
            libc::S_IFREG => {
                let mut vfs: libc::statvfs = std::mem::zeroed();
                libc::fstatvfs(fd.as_raw_fd(), &mut vfs) == 0 && vfs.f_bavail == 0 && vfs.f_blocks > 0
            }
            _ => false,
        }
    }
}

/// Whether an I/O error means the reader went away (`| head`): the run
/// then ends quietly.
pub fn is_closed_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}
