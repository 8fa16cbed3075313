//! `serve nbd`: a snapshot as a read-only NBD export, its chunks fetched, verified and decoded on
//! demand — a disk usable at once, before (or instead of) a full restore.
//!
//! The protocol — every byte a client sends, parsed and checked — is the `blocksnap-nbd` crate
//! (handshake, requests, replies; fuzzed on its own). This file holds what is the store's: the
//! export (a [`SnapshotView`]), the socket and the cancellation. Chunk locations come from the
//! pack trailers, so the index stays free for snapshots running beside it.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use blocksnap_manifest::SnapshotDoc;
use blocksnap_nbd::{End, Handshake, Step, Tls};
use blocksnap_pack::ChunkCodec;
use rayon::prelude::*;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::packs::reader::{ChunkReader, Locator};
use crate::progress::Progress;
use crate::repo::Store;
use crate::serve::cache::ChunkCache;
use crate::snapshot::view::{SnapshotView, Span};

/// What every connection reads from: a view of the snapshot and the decoded chunks they share.
struct Export<'a> {
    name: String,
    size: u64,
    view: SnapshotView<'a>,
    cache: ChunkCache,
}

/// Bytes of the volume read ahead of a connection reading in order.
const READ_AHEAD: u64 = 16 << 20;

impl Export<'_> {
    /// The bytes of a data span's chunk, decoded (or shared from the cache) and verified.
    fn chunk(&self, span: &Span) -> std::result::Result<Arc<Vec<u8>>, String> {
        let Some(id) = span.chunk else {
            return Ok(Arc::new(vec![0u8; span.len as usize]));
        };
        self.cache.get(&id, span.len, || {
            let data = self.view.reader().read(&id).map_err(|e| e.to_string())?;
            if data.len() as u64 != span.len {
                return Err(format!(
                    "chunk {id} has {} bytes, the extent list says {}",
                    data.len(),
                    span.len
                ));
            }
            Ok(data)
        })
    }

    /// Fills `out` with the bytes at `offset` (the protocol checked the range): the chunks it
    /// touches are decoded in parallel.
    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), String> {
        let spans = self.view.spans();
        let end = offset + out.len() as u64;
        let mut parts: Vec<(Span, usize, &mut [u8])> = Vec::new();
        let mut rest = out;
        let mut pos = offset;
        let mut i = self.view.span_at(offset);
        while pos < end {
            let Some(&span) = spans.get(i) else {
                return Err(format!("byte {pos} lies past the snapshot's extents"));
            };
            let n = (span.end().min(end) - pos) as usize;
            let (dst, r) = std::mem::take(&mut rest).split_at_mut(n);
            rest = r;
            parts.push((span, (pos - span.offset) as usize, dst));
            pos += n as u64;
            i += 1;
        }
        let fill = |(span, from, dst): (Span, usize, &mut [u8])| {
            match span.chunk {
                None => dst.fill(0),
                Some(_) => {
                    let n = dst.len();
                    dst.copy_from_slice(&self.chunk(&span)?[from..from + n]);
                }
            }
            Ok::<(), String>(())
        };
        if parts.len() > 1 {
            parts.into_par_iter().try_for_each(fill)
        } else {
            parts.into_iter().try_for_each(fill)
        }
    }

    /// Decodes into the cache the chunks of `from..to` that are not there yet, in parallel
    /// (errors are left for the read that needs the chunk to report).
    fn prefetch(&self, from: u64, to: u64) {
        let spans = self.view.spans();
        let first = self.view.span_at(from);
        let wanted: Vec<Span> = spans[first.min(spans.len())..]
            .iter()
            .take_while(|s| s.offset < to)
            .filter(|s| s.chunk.is_some_and(|id| !self.cache.has(&id)))
            .copied()
            .collect();
        wanted.par_iter().for_each(|s| {
            let _ = self.chunk(s);
        });
    }

    /// The runs of `from..from + len`: spans of one kind merged, at most `max`.
    fn runs(&self, from: u64, len: u64, max: usize, out: &mut Vec<blocksnap_nbd::Run>) {
        let end = from + len;
        let start = out.len();
        for span in &self.view.spans()[self.view.span_at(from)..] {
            if span.offset >= end {
                break;
            }
            let n = span.end().min(end) - span.offset.max(from);
            let hole = span.chunk.is_none();
            let full = out.len() - start == max;
            match out[start..].last_mut() {
                Some(r) if r.hole == hole => r.len += n,
                _ if full => break,
                _ => out.push(blocksnap_nbd::Run { len: n, hole }),
            }
        }
    }
}

/// One connection's reader of the export: it notices reading in order and reads ahead.
struct Reader<'e, 'a> {
    export: &'e Export<'a>,
    ahead: crossbeam_channel::Sender<(u64, u64)>,
    /// Where the last read ended, and how far reading ahead was asked to go.
    last_end: std::cell::Cell<u64>,
    ahead_to: std::cell::Cell<u64>,
}

impl blocksnap_nbd::Export for Reader<'_, '_> {
    fn name(&self) -> &str {
        &self.export.name
    }

    fn size(&self) -> u64 {
        self.export.size
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), String> {
        let end = offset + out.len() as u64;
        // In order (or skipping a little, as a client that skips holes does): read ahead.
        let last = self.last_end.replace(end);
        if offset >= last && offset - last <= READ_AHEAD {
            let from = self.ahead_to.get().max(end);
            if from < end + READ_AHEAD / 2 && from < self.export.size {
                let to = (from + READ_AHEAD).min(self.export.size);
                if self.ahead.try_send((from, to)).is_ok() {
                    self.ahead_to.set(to);
                }
            }
        } else {
            self.ahead_to.set(end);
        }
        self.export.read_at(offset, out)
    }

    fn allocation(&self, offset: u64, len: u64, max: usize, out: &mut Vec<blocksnap_nbd::Run>) {
        self.export.runs(offset, len, max, out);
    }
}

/// How often a connection waiting for its client, and the accept loop, look for a cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// A socket's reading half that waits for data in [`CANCEL_POLL`] steps (a read timeout, after
/// which nothing has been read and the read is retried), ending with an error once
/// cancellation is requested.
/// It also ends a connection on which the client sent nothing for `idle` (a client that
/// connects and goes quiet must not hold a connection slot for ever).
struct Cancellable {
    stream: Box<dyn Conn>,
    idle: Duration,
}

/// A client's connection: TCP or a Unix socket.
trait Conn: Read + Write + Send {
    fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>>;
    fn set_blocking_with_timeout(&self, timeout: Duration) -> io::Result<()>;
}

impl Conn for TcpStream {
    fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn set_blocking_with_timeout(&self, timeout: Duration) -> io::Result<()> {
        let _ = self.set_nodelay(true);
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(timeout))
    }
}

impl Conn for UnixStream {
    fn try_clone_conn(&self) -> io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn set_blocking_with_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(timeout))
    }
}

/// Where `serve nbd` listens.
enum Listening {
    Tcp(TcpListener),
    /// A Unix socket, removed when serving ends.
    Unix(UnixListener, PathBuf),
}

impl Listening {
    /// Binds `socket` (a Unix socket path), else `listen` (a TCP address).
    fn bind(listen: &str, socket: Option<&Path>) -> Result<Listening> {
        let Some(path) = socket else {
            let l = TcpListener::bind(listen).map_err(|e| {
                StoreError::Usage(format!(
                    "cannot listen on {listen}: {e}; pass another --listen ADDR:PORT"
                ))
            })?;
            return Ok(Listening::Tcp(l));
        };
        // An existing file is never replaced: only a socket nobody listens on (left by a
        // killed server) is removed first.
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(StoreError::Usage(format!(
                    "--socket {}: a file that is not a socket is there; pass another path",
                    path.display()
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(StoreError::Usage(format!(
                    "--socket {}: another server is listening there; pass another path",
                    path.display()
                )));
            }
            std::fs::remove_file(path)
                .map_err(StoreError::io("cannot remove the stale socket", path))?;
        }
        let l = UnixListener::bind(path).map_err(|e| {
            StoreError::Usage(format!(
                "cannot listen on {}: {e}; pass another --socket PATH",
                path.display()
            ))
        })?;
        Ok(Listening::Unix(l, path.to_path_buf()))
    }

    fn describe(&self) -> String {
        match self {
            Listening::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            Listening::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listening::Tcp(l) => l.set_nonblocking(true),
            Listening::Unix(l, _) => l.set_nonblocking(true),
        }
    }

    /// A new connection and who it is from.
    fn accept(&self) -> io::Result<(Box<dyn Conn>, String)> {
        match self {
            Listening::Tcp(l) => l
                .accept()
                .map(|(s, a)| (Box::new(s) as Box<dyn Conn>, a.to_string())),
            Listening::Unix(l, p) => l.accept().map(|(s, _)| {
                (
                    Box::new(s) as Box<dyn Conn>,
                    format!("unix:{}", p.display()),
                )
            }),
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Listening::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Read for Cancellable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let since = std::time::Instant::now();
        loop {
            match self.stream.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if crate::cancel::is_requested() {
                        // Not ErrorKind::Interrupted: read_exact would retry that.
                        return Err(io::Error::other("interrupted"));
                    }
                    if since.elapsed() >= self.idle {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("idle for {} s", self.idle.as_secs()),
                        ));
                    }
                }
                r => return r,
            }
        }
    }
}

/// How `serve nbd` treats its clients.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Connections served at once; one more is closed at once, with a log line.
    pub max_connections: usize,
    /// A connection on which the client sends nothing this long is closed.
    pub idle_timeout: Duration,
    /// Listen on this Unix socket instead of TCP (for hypervisors on the same host).
    pub socket: Option<PathBuf>,
    /// Bytes of decoded chunks kept for every connection to share (read-ahead included).
    pub cache_bytes: u64,
    /// TLS: required of every client when set (`NBD_OPT_STARTTLS` before anything else).
    pub tls: Option<TlsFiles>,
}

/// The server's certificate and key for TLS (PEM files), and optionally the CA whose
/// certificates clients must then present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, server first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// qemu's x509 credential layout: `server-cert.pem` and `server-key.pem` in `dir`, and if
    /// `ca-cert.pem` is there too, client certificates signed by it are required (qemu's
    /// `verify-peer=on`, its default for a server).
    pub fn from_dir(dir: &Path) -> TlsFiles {
        let ca = dir.join("ca-cert.pem");
        TlsFiles {
            cert: dir.join("server-cert.pem"),
            key: dir.join("server-key.pem"),
            client_ca: ca.exists().then_some(ca),
        }
    }

    /// The rustls configuration (aws-lc-rs, TLS 1.2 and 1.3), or an error naming the file.
    fn config(&self) -> Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            StoreError::Usage(format!(
                "TLS {what} {}: {e}; pass a PEM file (--tls-cert, --tls-key, or --tls-creds DIR \
                 holding server-cert.pem and server-key.pem)",
                path.display()
            ))
        };
        let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>> {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| bad("certificate", path, &e))?;
            if certs.is_empty() {
                return Err(bad("certificate", path, &"no certificate in it"));
            }
            Ok(certs)
        };
        let chain = certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| bad("key", &self.key, &e))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Other(format!("TLS: {e}")))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca)? {
                    roots.add(c).map_err(|e| bad("CA certificate", ca, &e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| bad("CA certificate", ca, &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| bad("certificate and key", &self.cert, &e))?;
        Ok(Arc::new(config))
    }
}

/// The raw connection under TLS: reads that wait (idle timeout, cancellation), plain writes.
struct Duplex {
    r: Cancellable,
    w: Box<dyn Conn>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

type TlsStream = rustls::StreamOwned<rustls::ServerConnection, Duplex>;

/// One half of a TLS stream (the protocol reads and writes in turn, on one thread).
struct TlsHalf(std::rc::Rc<std::cell::RefCell<TlsStream>>);

impl Read for TlsHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

impl Write for TlsHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 16,
            idle_timeout: Duration::from_secs(600),
            socket: None,
            cache_bytes: 256 << 20,
            tls: None,
        }
    }
}

/// One connection, from the greeting to the end, with a log line saying how it ended and what
/// it was sent.
fn serve_connection(
    stream: Box<dyn Conn>,
    peer: &str,
    export: &Export<'_>,
    idle: Duration,
    tls: Option<&Arc<rustls::ServerConfig>>,
    progress: &dyn Progress,
) {
    let Ok(read_half) = stream.try_clone_conn() else {
        return;
    };
    if stream.set_blocking_with_timeout(CANCEL_POLL).is_err() {
        return;
    }
    let mut r = BufReader::new(Cancellable {
        stream: read_half,
        idle,
    });
    let mut w = BufWriter::with_capacity(256 << 10, stream);
    let (ahead_tx, ahead_rx) = crossbeam_channel::bounded::<(u64, u64)>(2);
    let mut stats = blocksnap_nbd::Stats::default();
    let result = std::thread::scope(|scope| {
        // Reads ahead for this connection while it sends what it has.
        scope.spawn(move || {
            for (from, to) in ahead_rx {
                if crate::cancel::is_requested() {
                    break;
                }
                export.prefetch(from, to);
            }
        });
        let reader = Reader {
            export,
            ahead: ahead_tx,
            last_end: std::cell::Cell::new(0),
            ahead_to: std::cell::Cell::new(0),
        };
        let mut on_error = |e: &str| progress.message(&format!("{peer}: {e}"));
        let mode = if tls.is_some() {
            Tls::Required
        } else {
            Tls::Off
        };
        let mut h = Handshake::greet(&mut r, &mut w, mode)?;
        match h.options(&mut r, &mut w, &reader)? {
            Step::Transmission(session) => blocksnap_nbd::transmission_session(
                &mut r,
                &mut w,
                &reader,
                session,
                &mut on_error,
                &mut stats,
            ),
            Step::StartTls => {
                // The client waits for the ACK before its TLS hello: nothing may be buffered.
                let Some(config) = tls else {
                    return Err(End::Done);
                };
                if !r.buffer().is_empty() {
                    return Err(End::Done);
                }
                let w = w.into_inner().map_err(|e| End::Io(e.into_error()))?;
                let raw = Duplex {
                    r: r.into_inner(),
                    w,
                };
                let conn = rustls::ServerConnection::new(config.clone())
                    .map_err(|e| End::Io(io::Error::other(e)))?;
                let stream =
                    std::rc::Rc::new(std::cell::RefCell::new(rustls::StreamOwned::new(conn, raw)));
                let mut r = BufReader::new(TlsHalf(stream.clone()));
                let mut w = BufWriter::with_capacity(256 << 10, TlsHalf(stream.clone()));
                h.tls_started();
                let result = match h.options(&mut r, &mut w, &reader) {
                    Ok(Step::Transmission(session)) => blocksnap_nbd::transmission_session(
                        &mut r,
                        &mut w,
                        &reader,
                        session,
                        &mut on_error,
                        &mut stats,
                    ),
                    Ok(Step::StartTls) => Err(End::Done),
                    Err(e) => Err(e),
                };
                // Tell the client the session ends (not a truncation).
                let _ = w.flush();
                drop(w);
                let mut s = stream.borrow_mut();
                s.conn.send_close_notify();
                let _ = s.flush();
                result
            }
        }
        // The reader (and its sender) drop here: the read-ahead thread ends.
    });
    let how = match result {
        Ok(()) | Err(End::Done) => "disconnected".to_string(),
        Err(End::Io(e)) => format!("connection ended ({e})"),
    };
    progress.message(&format!(
        "{peer}: {how} after {} requests: {} bytes sent as data, {} as holes, {} block status \
         replies; the server has decoded {} bytes in {} chunks",
        stats.requests,
        stats.data_bytes,
        stats.hole_bytes,
        stats.status_requests,
        export.cache.decoded_bytes.load(Ordering::Relaxed),
        export.cache.decoded_chunks.load(Ordering::Relaxed),
    ));
}

/// What `serve nbd` is about to serve (for the message printed before serving).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServeInfo {
    /// The address it listens on.
    pub listen: String,
    /// The export's name (the snapshot id).
    pub export: String,
    /// Its size in bytes.
    pub size: u64,
    /// Every client must start TLS first.
    pub tls: bool,
}

impl Store {
    /// Serves `snapshot` (or `IMAGE:DEVICE`) read-only over NBD on `listen`, each client on its
    /// own thread (sharing the snapshot's view and its chunk cache), at most
    /// `opts.max_connections` at once, until cancelled ([`crate::cancel::request`]: it then
    /// returns [`StoreError::Interrupted`], after every connection has ended). `ready` is called
    /// once the socket listens.
    pub fn serve_nbd(
        &self,
        access: &Access,
        what: &str,
        listen: &str,
        opts: &ServeOptions,
        progress: &dyn Progress,
        ready: impl FnOnce(&ServeInfo),
    ) -> Result<()> {
        let doc = self.export_snapshot(access, what)?;
        let codec: ChunkCodec = self.snapshot_codec(access, &doc)?;
        let _lock = self.lock_reading("serve", progress)?;
        let locator = Locator::Map(self.locations_for(&doc, &codec)?);
        let reader = ChunkReader::with_locator(self, &codec, locator);
        let export = Export {
            name: doc.id.to_string(),
            size: doc.size,
            view: SnapshotView::open(&doc, reader)?,
            cache: ChunkCache::new(opts.cache_bytes),
        };
        let tls = opts.tls.as_ref().map(TlsFiles::config).transpose()?;
        let tls = tls.as_ref();
        let listener = Listening::bind(listen, opts.socket.as_deref())?;
        let local = listener.describe();
        ready(&ServeInfo {
            listen: local,
            export: export.name.clone(),
            size: export.size,
            tls: tls.is_some(),
        });
        // Non-blocking, polled: a cancellation (Ctrl-C) ends the loop within CANCEL_POLL.
        listener
            .set_nonblocking()
            .map_err(|e| StoreError::Other(format!("cannot listen on {listen}: {e}")))?;
        let active = std::sync::atomic::AtomicUsize::new(0);
        let export = &export;
        std::thread::scope(|scope| {
            loop {
                crate::cancel::check()?;
                match listener.accept() {
                    Ok((s, peer)) => {
                        use std::sync::atomic::Ordering;
                        if active.load(Ordering::SeqCst) >= opts.max_connections {
                            progress.message(&format!(
                                "{peer}: refused, {} connections are being served already \
                             (--max-connections)",
                                opts.max_connections
                            ));
                            drop(s);
                            continue;
                        }
                        active.fetch_add(1, Ordering::SeqCst);
                        let active = &active;
                        let idle = opts.idle_timeout;
                        scope.spawn(move || {
                            serve_connection(s, &peer, export, idle, tls, progress);
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(CANCEL_POLL)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        progress.message(&format!("accept failed: {e}"));
                        std::thread::sleep(CANCEL_POLL);
                    }
                }
            }
        })
    }

    /// The snapshot behind `SNAPSHOT` or `IMAGE:DEVICE`; an image needs the right to launch it.
    fn export_snapshot(&self, access: &Access, what: &str) -> Result<SnapshotDoc> {
        // Names may hold ':' too: try every split, image on the left, device on the right.
        for (i, _) in what.match_indices(':') {
            let (image, device) = (&what[..i], &what[i + 1..]);
            let Ok(doc) = self.resolve_image(image) else {
                continue;
            };
            let Some(v) = doc.volume(device) else {
                return Err(StoreError::Usage(format!(
                    "image '{}' has no device {device}; its devices: {}",
                    doc.name,
                    doc.volumes
                        .iter()
                        .map(|v| v.device.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            self.check_launch(access, &doc)?;
            let codec = self.image_codec(access, &doc)?;
            let snap = self.resolve_snapshot(&v.snapshot.to_string())?;
            self.verify(&codec, &snap)?;
            return Ok(snap);
        }
        self.resolve_snapshot(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InitOptions;
    use blocksnap_manifest::SnapshotId;
    use blocksnap_nbd::{
        CMD_DISC, CMD_READ, FLAG_NO_ZEROES, IHAVEOPT, OPT_EXPORT_NAME, REQUEST_MAGIC,
        SIMPLE_REPLY_MAGIC,
    };

    #[test]
    fn a_snapshot_view_is_served_through_the_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            encryption: false,
            account: "alice".into(),
            identity: Some(dir.path().join("alice.key")),
            config_home: Some(dir.path().join("config")),
            ..InitOptions::default()
        };
        let (store, _) = Store::init(&dir.path().join("store"), &opts).unwrap();
        let codec = ChunkCodec::plain(3);
        let reader = ChunkReader::with_locator(&store, &codec, Locator::Map(Default::default()));
        let spans = vec![
            Span {
                offset: 0,
                len: 4096,
                chunk: None,
            },
            Span {
                offset: 4096,
                len: 4096,
                chunk: Some(blocksnap_manifest::ChunkId([1; 32])),
            },
        ];
        let export = Export {
            name: "snap-0000000000000001".into(),
            size: 8192,
            view: SnapshotView::from_spans(SnapshotId(1), 8192, spans, reader),
            cache: ChunkCache::new(1 << 20),
        };
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let export = Reader {
            export: &export,
            ahead: tx,
            last_end: Default::default(),
            ahead_to: Default::default(),
        };
        let mut input = u32::from(FLAG_NO_ZEROES).to_be_bytes().to_vec();
        input.extend_from_slice(&IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        input.extend_from_slice(&0u32.to_be_bytes());
        for (handle, offset) in [(1u64, 0u64), (2, 4096)] {
            input.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            input.extend_from_slice(&0u16.to_be_bytes());
            input.extend_from_slice(&CMD_READ.to_be_bytes());
            input.extend_from_slice(&handle.to_be_bytes());
            input.extend_from_slice(&offset.to_be_bytes());
            input.extend_from_slice(&100u32.to_be_bytes());
        }
        input.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        input.extend_from_slice(&[0, 0]);
        input.extend_from_slice(&CMD_DISC.to_be_bytes());
        input.extend_from_slice(&[0; 20]);
        let notes = std::sync::Mutex::new(Vec::new());
        let mut w = Vec::new();
        let _ = blocksnap_nbd::serve(&mut &input[..], &mut w, &export, &mut |e| {
            notes.lock().unwrap().push(e.to_string())
        });
        // Greeting (18), size and flags (10), then the replies: the hole reads as zeros, the
        // chunk no pack holds is EIO with the reason told.
        let first = &w[28..];
        assert_eq!(&first[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&first[4..8], &[0; 4]);
        assert!(first[16..116].iter().all(|&b| b == 0));
        let second = &first[116..];
        assert_eq!(&second[4..8], &5u32.to_be_bytes());
        let notes = notes.into_inner().unwrap();
        assert!(
            notes[0].contains("in none of the store's packs"),
            "{notes:?}"
        );
    }
}
