//! `serve nbd`: a snapshot as a read-only NBD export, its chunks fetched, verified and decoded on
//! demand — a disk usable at once, before (or instead of) a full restore.
//!
//! The server speaks the fixed-newstyle handshake (`NBD_OPT_EXPORT_NAME`, `NBD_OPT_INFO`,
//! `NBD_OPT_GO`, `NBD_OPT_LIST`, `NBD_OPT_ABORT`; everything else is refused as unsupported) and
//! simple replies: `NBD_CMD_READ`, `NBD_CMD_FLUSH` (a no-op) and `NBD_CMD_DISC`; writes and
//! trims get `EPERM`. Every field from the network is checked before use: a request out of
//! range gets `EINVAL`, a malformed one ends the connection; nothing panics. Chunk locations
//! come from the pack trailers, so the index stays free for snapshots running beside it.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};

use std::time::Duration;

use blocksnap_manifest::SnapshotDoc;
use blocksnap_pack::ChunkCodec;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::packs::reader::{ChunkReader, Locator};
use crate::progress::Progress;
use crate::repo::Store;
use crate::snapshot::view::SnapshotView;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const FLAG_HAS_FLAGS: u16 = 1;
const FLAG_READ_ONLY: u16 = 2;
const FLAG_SEND_FLUSH: u16 = 4;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const INFO_EXPORT: u16 = 0;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;

/// Longest option payload accepted (an export name and a few info requests).
const MAX_OPTION_LEN: u32 = 4096;
/// Longest read served in one request (qemu asks for at most 32 MiB).
const MAX_REQUEST_LEN: u32 = 32 << 20;

/// What a connection reads from: a view of the snapshot.
struct Export<'a> {
    name: String,
    size: u64,
    view: SnapshotView<'a>,
}

impl Export<'_> {
    /// Fills `out` with the bytes at `offset` (the caller checked the range).
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        self.view.read_at(offset, out)
    }
}

/// A connection ended by protocol: the client left, or sent something that ends it.
enum End {
    Done,
    Io(io::Error),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn option_reply(w: &mut impl Write, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    w.write_all(&REPLY_MAGIC.to_be_bytes())?;
    w.write_all(&option.to_be_bytes())?;
    w.write_all(&kind.to_be_bytes())?;
    w.write_all(&(data.len() as u32).to_be_bytes())?;
    w.write_all(data)?;
    w.flush()
}

/// The export information block (`NBD_INFO_EXPORT`): size and transmission flags.
fn info_export(size: u64) -> Vec<u8> {
    let mut v = INFO_EXPORT.to_be_bytes().to_vec();
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&transmission_flags().to_be_bytes());
    v
}

fn transmission_flags() -> u16 {
    FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH
}

/// True if `name` asks for this export: the empty default name, or the export's own name.
fn names_export(name: &[u8], export: &Export<'_>) -> bool {
    name.is_empty() || name == export.name.as_bytes()
}

/// The handshake; returns when the client has chosen the export (then transmission starts).
fn handshake(r: &mut impl Read, w: &mut impl Write, export: &Export<'_>) -> Result<(), End> {
    w.write_all(&NBDMAGIC.to_be_bytes())?;
    w.write_all(&IHAVEOPT.to_be_bytes())?;
    w.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    w.flush()?;
    let client_flags = read_u32(r)?;
    let no_zeroes = client_flags & u32::from(FLAG_NO_ZEROES) != 0;
    loop {
        if read_u64(r)? != IHAVEOPT {
            return Err(End::Done);
        }
        let option = read_u32(r)?;
        let len = read_u32(r)?;
        if len > MAX_OPTION_LEN {
            return Err(End::Done);
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                if !names_export(&data, export) {
                    return Err(End::Done);
                }
                w.write_all(&export.size.to_be_bytes())?;
                w.write_all(&transmission_flags().to_be_bytes())?;
                if !no_zeroes {
                    w.write_all(&[0u8; 124])?;
                }
                w.flush()?;
                return Ok(());
            }
            OPT_ABORT => {
                option_reply(w, option, REP_ACK, &[])?;
                return Err(End::Done);
            }
            OPT_LIST => {
                let mut v = (export.name.len() as u32).to_be_bytes().to_vec();
                v.extend_from_slice(export.name.as_bytes());
                option_reply(w, option, REP_SERVER, &v)?;
                option_reply(w, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                // u32 name length, name, u16 count of info requests, the requests.
                let name = data
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .and_then(|n| data.get(4..4 + n));
                match name {
                    None => option_reply(w, option, REP_ERR_INVALID, &[])?,
                    Some(name) if !names_export(name, export) => {
                        option_reply(w, option, REP_ERR_UNKNOWN, &[])?;
                    }
                    Some(_) => {
                        option_reply(w, option, REP_INFO, &info_export(export.size))?;
                        option_reply(w, option, REP_ACK, &[])?;
                        if option == OPT_GO {
                            return Ok(());
                        }
                    }
                }
            }
            _ => option_reply(w, option, REP_ERR_UNSUP, &[])?,
        }
    }
}

fn simple_reply(w: &mut impl Write, error: u32, handle: u64, data: &[u8]) -> io::Result<()> {
    w.write_all(&SIMPLE_REPLY_MAGIC.to_be_bytes())?;
    w.write_all(&error.to_be_bytes())?;
    w.write_all(&handle.to_be_bytes())?;
    w.write_all(data)?;
    w.flush()
}

/// The transmission phase: requests until `NBD_CMD_DISC` or the connection ends.
fn transmission(
    r: &mut impl Read,
    w: &mut impl Write,
    export: &Export<'_>,
    progress: &dyn Progress,
) -> Result<(), End> {
    let mut buf = Vec::new();
    loop {
        if read_u32(r)? != REQUEST_MAGIC {
            return Err(End::Done);
        }
        let _flags = read_u16(r)?;
        let kind = read_u16(r)?;
        let handle = read_u64(r)?;
        let offset = read_u64(r)?;
        let len = read_u32(r)?;
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= export.size);
        match kind {
            CMD_READ if !in_range || len > MAX_REQUEST_LEN => {
                simple_reply(w, EINVAL, handle, &[])?;
            }
            CMD_READ => {
                buf.resize(len as usize, 0);
                match export.read(offset, &mut buf) {
                    Ok(()) => simple_reply(w, 0, handle, &buf)?,
                    Err(e) => {
                        progress.message(&format!("read of {len} bytes at {offset} failed: {e}"));
                        simple_reply(w, EIO, handle, &[])?;
                    }
                }
            }
            CMD_WRITE => {
                // The payload follows the request: skip it (or end the connection if absurd).
                if len > MAX_REQUEST_LEN {
                    return Err(End::Done);
                }
                io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
                simple_reply(w, EPERM, handle, &[])?;
            }
            CMD_DISC => return Err(End::Done),
            CMD_FLUSH => simple_reply(w, 0, handle, &[])?,
            _ => simple_reply(w, EPERM, handle, &[])?,
        }
    }
}

/// How often a connection waiting for its client, and the accept loop, look for a cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// A socket's reading half that waits for data in [`CANCEL_POLL`] steps (a read timeout, after
/// which nothing has been read and the read is retried), ending with an error once
/// cancellation is requested.
struct Cancellable(TcpStream);

impl Read for Cancellable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
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
                }
                r => return r,
            }
        }
    }
}

fn serve_connection(stream: TcpStream, export: &Export<'_>, progress: &dyn Progress) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(CANCEL_POLL)).is_err()
    {
        return;
    }
    let mut r = BufReader::new(Cancellable(read_half));
    let mut w = BufWriter::new(stream);
    let result = handshake(&mut r, &mut w, export)
        .and_then(|()| transmission(&mut r, &mut w, export, progress));
    match result {
        Ok(()) | Err(End::Done) => progress.message(&format!("{peer}: disconnected")),
        Err(End::Io(e)) => progress.message(&format!("{peer}: connection ended ({e})")),
    }
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
}

impl Store {
    /// Serves `snapshot` (or `IMAGE:DEVICE`) read-only over NBD on `listen`, one client at a
    /// time, until cancelled ([`crate::cancel::request`]: it then returns
    /// [`StoreError::Interrupted`]). `ready` is called once the socket listens.
    pub fn serve_nbd(
        &self,
        access: &Access,
        what: &str,
        listen: &str,
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
        };
        let listener = TcpListener::bind(listen).map_err(|e| {
            StoreError::Usage(format!(
                "cannot listen on {listen}: {e}; pass another --listen ADDR:PORT"
            ))
        })?;
        let local = listener
            .local_addr()
            .map_or_else(|_| listen.to_string(), |a| a.to_string());
        ready(&ServeInfo {
            listen: local,
            export: export.name.clone(),
            size: export.size,
        });
        // Non-blocking, polled: a cancellation (Ctrl-C) ends the loop within CANCEL_POLL.
        listener
            .set_nonblocking(true)
            .map_err(|e| StoreError::Other(format!("cannot listen on {listen}: {e}")))?;
        loop {
            crate::cancel::check()?;
            match listener.accept() {
                Ok((s, _)) => serve_connection(s, &export, progress),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(CANCEL_POLL),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    progress.message(&format!("accept failed: {e}"));
                    std::thread::sleep(CANCEL_POLL);
                }
            }
        }
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
    use crate::snapshot::view::Span;
    use crate::{InitOptions, NoProgress};
    use blocksnap_manifest::SnapshotId;

    fn with_export(f: impl FnOnce(&Export<'_>)) {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            encryption: false,
            account: "alice".into(),
            identity: Some(dir.path().join("alice.key")),
            ..InitOptions::default()
        };
        let (store, _) = Store::init(&dir.path().join("store"), &opts).unwrap();
        let codec = ChunkCodec::plain(3);
        let reader = ChunkReader::with_locator(&store, &codec, Locator::Map(Default::default()));
        let spans = vec![Span {
            offset: 0,
            len: 1 << 20,
            chunk: None,
        }];
        let export = Export {
            name: "snap-0000000000000001".into(),
            size: 1 << 20,
            view: SnapshotView::from_spans(SnapshotId(1), 1 << 20, spans, reader),
        };
        f(&export);
    }

    fn session(export: &Export<'_>, input: &[u8]) -> Vec<u8> {
        let mut r = input;
        let mut w = Vec::new();
        if handshake(&mut r, &mut w, export).is_ok() {
            let _ = transmission(&mut r, &mut w, export, &NoProgress);
        }
        w
    }

    fn request(kind: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&0u16.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&handle.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    #[test]
    fn a_go_session_reads_and_refuses_what_it_must() {
        with_export(|export| {
            let mut input = u32::from(FLAG_NO_ZEROES).to_be_bytes().to_vec();
            input.extend_from_slice(&IHAVEOPT.to_be_bytes());
            input.extend_from_slice(&OPT_GO.to_be_bytes());
            input.extend_from_slice(&6u32.to_be_bytes());
            input.extend_from_slice(&0u32.to_be_bytes()); // empty name
            input.extend_from_slice(&0u16.to_be_bytes()); // no info requests
            input.extend(request(CMD_READ, 7, 4096, 100));
            input.extend(request(CMD_READ, 8, (1 << 20) - 10, 100)); // past the end
            input.extend(request(CMD_WRITE, 9, 0, 3));
            input.extend_from_slice(b"abc");
            input.extend(request(CMD_DISC, 10, 0, 0));
            let out = session(export, &input);
            // Greeting (18), INFO reply (20 + 12), ACK (20), then the replies.
            let replies = &out[18 + 32 + 20..];
            assert_eq!(&replies[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
            assert_eq!(&replies[4..8], &0u32.to_be_bytes());
            assert_eq!(&replies[8..16], &7u64.to_be_bytes());
            assert!(replies[16..116].iter().all(|&b| b == 0));
            let second = &replies[116..];
            assert_eq!(&second[4..8], &EINVAL.to_be_bytes());
            let third = &second[16..];
            assert_eq!(&third[4..8], &EPERM.to_be_bytes());
            assert_eq!(
                third.len(),
                16,
                "nothing after the write's reply: DISC ends it"
            );
        });
    }

    #[test]
    fn random_clients_never_panic_the_server() {
        with_export(|export| {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for case in 0..3000 {
                // Valid prefixes followed by noise reach deeper states than noise alone.
                let mut input = Vec::new();
                if case % 2 == 0 {
                    input.extend_from_slice(&0u32.to_be_bytes());
                    input.extend_from_slice(&IHAVEOPT.to_be_bytes());
                    input.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
                    input.extend_from_slice(&0u32.to_be_bytes());
                }
                let len = (next() % 200) as usize;
                for _ in 0..len {
                    input.push(next() as u8);
                }
                if case % 3 == 0 {
                    input.extend(request(CMD_READ, 1, next() % (2 << 20), next() as u32));
                }
                let _ = session(export, &input);
            }
        });
    }
}
