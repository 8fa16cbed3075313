//! NBD exports as disks: `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`, read
//! with blocksnap's NBD client. Where the data is comes from `base:allocation` block status
//! (ranges that read as zeros are not read); reads go out several requests at a time. A dirty
//! bitmap (`qemu:dirty-bitmap:NAME`, negotiated at connect) gives the ranges written since it
//! was started.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use blocksnap_nbd::client::{
    Address, BASE_ALLOCATION, BLOCK_STATUS_LEN, Client, ClientError, STATE_DIRTY, STATE_ZERO, Uri,
};

use crate::Disk;

/// How long a server may stay silent before a read fails (a server that hangs must not hang a
/// snapshot forever).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// How much one read covers at least: [`Client::read_at`] sends its requests (of at most
/// [`blocksnap_nbd::client::READ_REQUEST_LEN`]) all at once, so a read of 2 MiB keeps 8 in flight.
/// Measured on the 8 GiB VM image over `qemu-nbd` (benches/vm.sh, full read of 3.27 GB): reads
/// of 512 KiB took 4.3-5.2 s, of 2 MiB 2.9-3.5 s, of 4 and 8 MiB no better (3.0-3.7 s).
pub const MIN_READ: usize = 2 << 20;

/// A connection's two halves, buffered.
struct Conn<S: Read + Write> {
    r: BufReader<S>,
    w: BufWriter<S>,
}

impl<S: Read + Write> Read for Conn<S> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.r.read(b)
    }
}

impl<S: Read + Write> Write for Conn<S> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.w.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// A byte stream to a server.
trait Stream: Read + Write + Send {}
impl<S: Read + Write + Send> Stream for S {}

/// An NBD export, connected.
pub struct NbdDisk {
    client: Mutex<Client<Box<dyn Stream>>>,
    size: u64,
    uri: String,
    allocation: bool,
}

impl std::fmt::Debug for NbdDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDisk")
            .field("uri", &self.uri)
            .field("size", &self.size)
            .finish()
    }
}

/// The metadata context of dirty bitmap `name`.
pub fn bitmap_context(name: &str) -> String {
    format!("qemu:dirty-bitmap:{name}")
}

fn connect_stream(address: &Address) -> io::Result<Box<dyn Stream>> {
    Ok(match address {
        Address::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port))?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
            s.set_nodelay(true)?;
            let w = s.try_clone()?;
            Box::new(Conn {
                r: BufReader::with_capacity(256 << 10, s),
                w: BufWriter::new(w),
            })
        }
        Address::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
            let w = s.try_clone()?;
            Box::new(Conn {
                r: BufReader::with_capacity(256 << 10, s),
                w: BufWriter::new(w),
            })
        }
    })
}

impl NbdDisk {
    /// Connects to the export `uri` names, asking for `base:allocation` and, if given, dirty
    /// bitmap `bitmap` (which the server must grant). The error says what failed, in words,
    /// without the URI (the caller names it).
    pub fn connect(uri_text: &str, bitmap: Option<&str>) -> Result<NbdDisk, String> {
        let uri: Uri = uri_text.parse()?;
        let stream = connect_stream(&uri.address).map_err(|e| match &uri.address {
            Address::Tcp { host, port } => {
                format!("cannot connect to NBD server {host}:{port}: {e}")
            }
            Address::Unix(p) => format!("cannot connect to NBD socket {p}: {e}"),
        })?;
        let dirty = bitmap.map(bitmap_context);
        let mut contexts = vec![BASE_ALLOCATION];
        if let Some(d) = &dirty {
            contexts.push(d);
        }
        let client = Client::handshake(stream, &uri.export, &contexts).map_err(|e| match e {
            ClientError::Refused(m) => m,
            e => format!("the NBD handshake failed: {e}"),
        })?;
        if let (Some(name), Some(ctx)) = (bitmap, &dirty) {
            if client.context(ctx).is_none() {
                return Err(format!(
                    "the server exports no dirty bitmap '{name}' (it did not grant metadata context '{ctx}'): export it with `qemu-nbd --bitmap {name}`, or with the NBD server's `bitmaps` option of QEMU (see docs/VM-DISKS.md)"
                ));
            }
        }
        Ok(NbdDisk {
            size: client.size(),
            allocation: client.context(BASE_ALLOCATION).is_some(),
            client: Mutex::new(client),
            uri: uri_text.to_string(),
        })
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client<Box<dyn Stream>>> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the server gives `base:allocation` (else everything is read).
    pub fn knows_allocation(&self) -> bool {
        self.allocation
    }

    /// The ranges dirty bitmap `name` marks, merged and in order, over the whole export.
    pub fn dirty_ranges(&self, name: &str) -> io::Result<Vec<(u64, u64)>> {
        let ctx = bitmap_context(name);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut pos = 0u64;
        let mut c = self.client();
        while pos < self.size {
            let ext = c
                .block_status(&ctx, pos, u64::from(BLOCK_STATUS_LEN))
                .map_err(io::Error::other)?;
            for e in ext {
                if e.flags & STATE_DIRTY != 0 {
                    match out.last_mut() {
                        Some((_, end)) if *end == pos => *end = pos + e.len,
                        _ => out.push((pos, pos + e.len)),
                    }
                }
                pos += e.len;
            }
        }
        Ok(out)
    }

    /// Ends the connection politely.
    pub fn disconnect(self) {
        self.client
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .disconnect();
    }
}

impl Disk for NbdDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn next_data(&self, mut pos: u64) -> io::Result<Option<(u64, u64)>> {
        if pos >= self.size {
            return Ok(None);
        }
        if !self.allocation {
            return Ok(Some((pos, self.size)));
        }
        let mut c = self.client();
        let mut start = None;
        while pos < self.size {
            let ext = c
                .block_status(BASE_ALLOCATION, pos, u64::from(BLOCK_STATUS_LEN))
                .map_err(io::Error::other)?;
            for e in ext {
                let data = e.flags & STATE_ZERO == 0;
                match (data, start) {
                    (true, None) => start = Some(pos),
                    (false, Some(s)) => return Ok(Some((s, pos))),
                    _ => {}
                }
                pos += e.len;
            }
            // A range of data that runs on past this answer is given as far as known: the
            // reader asks again from its end.
            if let Some(s) = start {
                return Ok(Some((s, pos.min(self.size))));
            }
        }
        Ok(None)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.client()
            .read_at(buf, offset)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn min_read(&self) -> usize {
        MIN_READ
    }
}
