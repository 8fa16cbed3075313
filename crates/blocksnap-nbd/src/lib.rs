//! The NBD protocol of blocksnap's read-only export, apart from sockets and the store: every
//! byte a client sends is parsed here, so the parser can be tested and fuzzed on its own
//! (`fuzz/fuzz_targets/nbd_session.rs`, `nbd_request.rs`, `nbd_options.rs`).
//!
//! The server speaks the fixed-newstyle handshake: `NBD_OPT_EXPORT_NAME`, `NBD_OPT_INFO`,
//! `NBD_OPT_GO` (with `NBD_INFO_BLOCK_SIZE`), `NBD_OPT_LIST`, `NBD_OPT_ABORT`,
//! `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT` (one
//! context: `base:allocation`), and `NBD_OPT_STARTTLS` when the caller has TLS to offer (then
//! every other option before it is refused with `NBD_REP_ERR_TLS_REQD`, the spec's FORCEDTLS
//! mode; the caller does the TLS itself, see [`Step::StartTls`]). Everything else is refused as
//! unsupported.
//!
//! In transmission: `NBD_CMD_READ` (with structured replies, holes are sent as
//! `NBD_REPLY_TYPE_OFFSET_HOLE` chunks, never as zero bytes, so the export's [`Export::read`]
//! is only asked for data), `NBD_CMD_BLOCK_STATUS` (holes are `NBD_STATE_HOLE |
//! NBD_STATE_ZERO`), `NBD_CMD_FLUSH` (a no-op) and `NBD_CMD_DISC`; writes and trims get `EPERM`.
//! Every field from the network is checked before use: a request out of range gets `EINVAL`, a
//! malformed one ends the connection, no length from the client sizes an allocation beyond
//! [`MAX_OPTION_LEN`] or [`MAX_REQUEST_LEN`], a block status reply holds at most
//! [`MAX_STATUS_DESCRIPTORS`]; nothing panics.
//!
//! ```
//! use blocksnap_nbd::{Export, serve, parse_request, Request, REQUEST_LEN};
//! struct Zeros;
//! impl Export for Zeros {
//!     fn name(&self) -> &str { "disk" }
//!     fn size(&self) -> u64 { 1 << 20 }
//!     fn read(&self, _offset: u64, out: &mut [u8]) -> Result<(), String> { out.fill(0); Ok(()) }
//! }
//! // A client that sends only garbage gets the greeting and is let go.
//! let mut out = Vec::new();
//! let _ = serve(&mut &b"nonsense"[..], &mut out, &Zeros, &mut |_| {});
//! assert_eq!(&out[..8], b"NBDMAGIC");
//! assert_eq!(parse_request(&[0; REQUEST_LEN]), None);
//! ```

pub mod client;

use std::io::{self, Read, Write};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// The option magic, `IHAVEOPT`.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic that starts every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REPLY_MAGIC: u64 = OPTION_REPLY_MAGIC;
/// The magic that starts every request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic that starts every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic that starts every structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag (and client flag): no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
const FLAG_HAS_FLAGS: u16 = 1;
const FLAG_READ_ONLY: u16 = 2;
const FLAG_SEND_FLUSH: u16 = 4;
const FLAG_SEND_DF: u16 = 1 << 7;
const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`.
pub const REP_META_CONTEXT: u32 = 4;
/// `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
/// `NBD_REP_ERR_INVALID`.
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
/// `NBD_REP_ERR_TLS_REQD`.
pub const REP_ERR_TLS_REQD: u32 = 0x8000_0005;
/// `NBD_REP_ERR_UNKNOWN`.
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// Command flag `NBD_CMD_FLAG_DF`: a read's reply in one chunk.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag `NBD_CMD_FLAG_REQ_ONE`: a block status of one descriptor.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Structured reply flag `NBD_REPLY_FLAG_DONE`: the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1;
/// `NBD_REPLY_TYPE_NONE`.
pub const REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_OFFSET_HOLE`.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// `NBD_REPLY_TYPE_ERROR`.
pub const REPLY_TYPE_ERROR: u16 = 0x8001;

/// `NBD_STATE_HOLE` of `base:allocation`.
pub const STATE_HOLE: u32 = 1;
/// `NBD_STATE_ZERO` of `base:allocation`.
pub const STATE_ZERO: u32 = 2;
/// The one metadata context served.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id `NBD_OPT_SET_META_CONTEXT` gives `base:allocation`.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Error code of a refused write or trim.
pub const EPERM: u32 = 1;
/// Error code of a read that failed.
pub const EIO: u32 = 5;
/// Error code of a request out of range.
pub const EINVAL: u32 = 22;

/// Longest option payload accepted (an export name and a few info requests or queries).
pub const MAX_OPTION_LEN: u32 = 4096;
/// Longest read served in one request (qemu asks for at most 32 MiB), advertised as the
/// maximum payload in `NBD_INFO_BLOCK_SIZE`.
pub const MAX_REQUEST_LEN: u32 = 32 << 20;
/// Most descriptors in one block status reply (the spec asks for at most 2^20); a client asks
/// again from where the reply stopped.
pub const MAX_STATUS_DESCRIPTORS: usize = 1 << 16;
/// Length of a request header.
pub const REQUEST_LEN: usize = 28;

/// A run of the export: `len` bytes, a hole (reads as zeros, nothing stored) or data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Its length (not zero).
    pub len: u64,
    /// True if it is a hole.
    pub hole: bool,
}

/// What a connection reads from.
pub trait Export {
    /// The export's name (an empty name asks for it too).
    fn name(&self) -> &str;
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Fills `out` with the bytes at `offset` (the range was checked to lie within the export).
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), String>;
    /// The runs of `len` bytes from `offset` (checked to lie within the export; `len` is not
    /// zero), in order from `offset`, appended to `out`: at least one and at most `max`, not
    /// past `offset + len`, each not zero long. Fewer than cover the range is fine: the caller
    /// asks again from where they end. The default says "all data".
    fn allocation(&self, offset: u64, len: u64, max: usize, out: &mut Vec<Run>) {
        let _ = (offset, max);
        out.push(Run { len, hole: false });
    }
}

/// How a connection ended, when not by an I/O error of its own: the client left, or sent
/// something that ends it.
#[derive(Debug)]
pub enum End {
    /// The client disconnected, aborted, or broke the protocol.
    Done,
    /// Reading from or writing to the client failed.
    Io(io::Error),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

/// One request header, as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_DF` and `NBD_CMD_FLAG_REQ_ONE` are heeded).
    pub flags: u16,
    /// The command (`NBD_CMD_*`).
    pub kind: u16,
    /// The client's handle, echoed in the reply.
    pub handle: u64,
    /// Offset in the export.
    pub offset: u64,
    /// Length.
    pub len: u32,
}

/// What the server does for one request of an export of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read `len` bytes at `offset` (within the export, at most [`MAX_REQUEST_LEN`]).
    Read {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Tell the allocation of `len` bytes at `offset` (within the export, not zero).
    BlockStatus {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Reply with this error.
    Refuse(u32),
    /// Skip a write's `len` bytes of payload, then reply `EPERM`.
    SkipWrite(u32),
    /// Reply success (a flush: nothing is ever written).
    Ack,
    /// End the connection (a disconnect, or a payload too long to skip).
    End,
}

/// Parses a request header; `None` when it does not start with the request magic.
pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Option<Request> {
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
    (u32_at(0) == REQUEST_MAGIC).then(|| Request {
        flags: u16_at(4),
        kind: u16_at(6),
        handle: u64_at(8),
        offset: u64_at(16),
        len: u32_at(24),
    })
}

impl Request {
    /// What to do with it for an export of `size` bytes: every field checked.
    pub fn action(&self, size: u64) -> Action {
        let in_range = self
            .offset
            .checked_add(u64::from(self.len))
            .is_some_and(|end| end <= size);
        match self.kind {
            CMD_READ if !in_range || self.len > MAX_REQUEST_LEN => Action::Refuse(EINVAL),
            CMD_READ => Action::Read {
                offset: self.offset,
                len: self.len,
            },
            CMD_BLOCK_STATUS if !in_range || self.len == 0 => Action::Refuse(EINVAL),
            CMD_BLOCK_STATUS => Action::BlockStatus {
                offset: self.offset,
                len: self.len,
            },
            CMD_WRITE if self.len > MAX_REQUEST_LEN => Action::End,
            CMD_WRITE => Action::SkipWrite(self.len),
            CMD_DISC => Action::End,
            CMD_FLUSH => Action::Ack,
            _ => Action::Refuse(EPERM),
        }
    }
}

/// The export name an `NBD_OPT_INFO` or `NBD_OPT_GO` payload asks for: u32 name length, the
/// name, then info requests; `None` if the length runs past the payload.
pub fn info_request_name(data: &[u8]) -> Option<&[u8]> {
    info_request(data).map(|(name, _)| name)
}

/// An `NBD_OPT_INFO` or `NBD_OPT_GO` payload: the name and the info types asked for (u16
/// count, then u16 each); `None` if a length runs past the payload.
pub fn info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let (name, rest) = take_string(data)?;
    let Some(count) = rest.get(..2) else {
        // Old clients send the name alone.
        return rest.is_empty().then(|| (name, Vec::new()));
    };
    let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
    let items = rest.get(2..2 + 2 * count)?;
    let infos = items
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name, infos))
}

/// A u32 length and that many bytes, then the rest.
fn take_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = data.get(..4)?;
    let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let end = 4usize.checked_add(n)?;
    Some((data.get(4..end)?, &data[end..]))
}

/// An `NBD_OPT_LIST_META_CONTEXT` or `NBD_OPT_SET_META_CONTEXT` payload: the export name and
/// the queries; `None` if it is malformed (a length past the payload, bytes left over, more
/// queries than fit). Nothing is allocated by a count the client sent: each query takes at
/// least 4 bytes of the (bounded) payload.
pub fn meta_request(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let (name, rest) = take_string(data)?;
    let count = rest.get(..4)?;
    let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]) as usize;
    let mut rest = &rest[4..];
    if count > rest.len() / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        let (q, r) = take_string(rest)?;
        queries.push(q);
        rest = r;
    }
    rest.is_empty().then_some((name, queries))
}

/// True if a `NBD_OPT_LIST_META_CONTEXT` query matches `base:allocation` (no query lists
/// everything; `base:` is the namespace's wildcard).
fn lists_allocation(queries: &[&[u8]]) -> bool {
    queries.is_empty()
        || queries
            .iter()
            .any(|q| *q == b"base:" || *q == BASE_ALLOCATION.as_bytes())
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

/// An option refused with a message for a person (the spec allows one with every error).
fn option_error(w: &mut impl Write, option: u32, kind: u32, message: &str) -> io::Result<()> {
    option_reply(w, option, kind, message.as_bytes())
}

/// TLS on a connection, as the caller can offer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// No TLS: `NBD_OPT_STARTTLS` is unsupported.
    Off,
    /// TLS is required and not started yet: only `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` are
    /// served (FORCEDTLS).
    Required,
    /// TLS is running: another `NBD_OPT_STARTTLS` is invalid.
    Active,
}

/// Where the option haggling left the connection.
#[derive(Debug)]
pub enum Step {
    /// The client chose the export: transmission starts, with this session.
    Transmission(Session),
    /// The client asked for TLS and was told yes (`NBD_REP_ACK` sent): the caller runs the TLS
    /// handshake on the raw connection, calls [`Handshake::tls_started`] and then
    /// [`Handshake::options`] again over the TLS stream.
    StartTls,
}

/// What the handshake settled for transmission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected (with [`BASE_ALLOCATION_ID`]).
    pub allocation: bool,
}

/// What a connection did, counted as it went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests served.
    pub requests: u64,
    /// Bytes of the export sent as data.
    pub data_bytes: u64,
    /// Bytes of the export sent as holes (`NBD_REPLY_TYPE_OFFSET_HOLE`), never read.
    pub hole_bytes: u64,
    /// Block status requests answered.
    pub status_requests: u64,
}

/// The option haggling of one connection.
#[derive(Debug)]
pub struct Handshake {
    no_zeroes: bool,
    tls: Tls,
    session: Session,
}

/// The export information block (`NBD_INFO_EXPORT`): size and transmission flags.
fn info_export(size: u64, session: Session) -> Vec<u8> {
    let mut v = INFO_EXPORT.to_be_bytes().to_vec();
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&transmission_flags(session).to_be_bytes());
    v
}

/// `NBD_INFO_BLOCK_SIZE`: any alignment, 4 KiB preferred, [`MAX_REQUEST_LEN`] at most.
fn info_block_size() -> Vec<u8> {
    let mut v = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&4096u32.to_be_bytes());
    v.extend_from_slice(&MAX_REQUEST_LEN.to_be_bytes());
    v
}

/// Read-only, flush accepted; many connections see the same bytes (nothing is written).
fn transmission_flags(session: Session) -> u16 {
    let df = if session.structured { FLAG_SEND_DF } else { 0 };
    FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN | df
}

/// True if `name` asks for this export: the empty default name, or the export's own name.
fn names_export(name: &[u8], export: &dyn Export) -> bool {
    name.is_empty() || name == export.name().as_bytes()
}

impl Handshake {
    /// Sends the greeting and reads the client's flags (unknown ones end the connection, as
    /// the spec asks). `tls` is [`Tls::Required`] when the caller can do TLS, else
    /// [`Tls::Off`].
    pub fn greet(r: &mut impl Read, w: &mut impl Write, tls: Tls) -> Result<Handshake, End> {
        w.write_all(&NBDMAGIC.to_be_bytes())?;
        w.write_all(&IHAVEOPT.to_be_bytes())?;
        w.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
        w.flush()?;
        let client_flags = read_u32(r)?;
        if client_flags & !(FLAG_C_FIXED_NEWSTYLE | u32::from(FLAG_NO_ZEROES)) != 0 {
            return Err(End::Done);
        }
        Ok(Handshake {
            no_zeroes: client_flags & u32::from(FLAG_NO_ZEROES) != 0,
            tls,
            session: Session::default(),
        })
    }

    /// TLS now runs: what was negotiated before it is forgotten, as the spec asks.
    pub fn tls_started(&mut self) {
        self.tls = Tls::Active;
        self.session = Session::default();
    }

    /// Options until the client chooses the export or asks for TLS.
    pub fn options(
        &mut self,
        r: &mut impl Read,
        w: &mut impl Write,
        export: &dyn Export,
    ) -> Result<Step, End> {
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
            if let Some(step) = self.option(w, export, option, &data)? {
                return Ok(step);
            }
        }
    }

    /// One option; `Some` when haggling ends.
    fn option(
        &mut self,
        w: &mut impl Write,
        export: &dyn Export,
        option: u32,
        data: &[u8],
    ) -> Result<Option<Step>, End> {
        if self.tls == Tls::Required {
            return match option {
                OPT_STARTTLS if data.is_empty() => {
                    option_reply(w, option, REP_ACK, &[])?;
                    Ok(Some(Step::StartTls))
                }
                OPT_STARTTLS => {
                    option_error(w, option, REP_ERR_INVALID, "STARTTLS takes no data")?;
                    Ok(None)
                }
                OPT_ABORT => {
                    option_reply(w, option, REP_ACK, &[])?;
                    Err(End::Done)
                }
                // It cannot be answered with an error: the spec says to end the session.
                OPT_EXPORT_NAME => Err(End::Done),
                _ => {
                    option_error(
                        w,
                        option,
                        REP_ERR_TLS_REQD,
                        "this server requires TLS: start it with NBD_OPT_STARTTLS",
                    )?;
                    Ok(None)
                }
            };
        }
        match option {
            OPT_EXPORT_NAME => {
                if !names_export(data, export) {
                    return Err(End::Done);
                }
                w.write_all(&export.size().to_be_bytes())?;
                w.write_all(&transmission_flags(self.session).to_be_bytes())?;
                if !self.no_zeroes {
                    w.write_all(&[0u8; 124])?;
                }
                w.flush()?;
                return Ok(Some(Step::Transmission(self.session)));
            }
            OPT_ABORT => {
                option_reply(w, option, REP_ACK, &[])?;
                return Err(End::Done);
            }
            OPT_LIST => {
                let name = export.name().as_bytes();
                let mut v = (name.len() as u32).to_be_bytes().to_vec();
                v.extend_from_slice(name);
                option_reply(w, option, REP_SERVER, &v)?;
                option_reply(w, option, REP_ACK, &[])?;
            }
            OPT_STARTTLS if self.tls == Tls::Active => {
                option_error(w, option, REP_ERR_INVALID, "TLS is running already")?;
            }
            OPT_STRUCTURED_REPLY if !data.is_empty() => {
                option_error(w, option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")?;
            }
            OPT_STRUCTURED_REPLY => {
                self.session.structured = true;
                option_reply(w, option, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = option == OPT_SET_META_CONTEXT;
                if set {
                    // A SET replaces the selection, even when it fails.
                    self.session.allocation = false;
                }
                match meta_request(data) {
                    None => {
                        option_error(w, option, REP_ERR_INVALID, "malformed meta context request")?
                    }
                    Some(_) if set && !self.session.structured => option_error(
                        w,
                        option,
                        REP_ERR_INVALID,
                        "negotiate structured replies first",
                    )?,
                    Some((name, _)) if !names_export(name, export) => {
                        option_error(w, option, REP_ERR_UNKNOWN, "no such export")?;
                    }
                    Some((_, queries)) => {
                        let selected = if set {
                            queries.contains(&BASE_ALLOCATION.as_bytes())
                        } else {
                            lists_allocation(&queries)
                        };
                        if selected {
                            let id = if set { BASE_ALLOCATION_ID } else { 0 };
                            let mut v = id.to_be_bytes().to_vec();
                            v.extend_from_slice(BASE_ALLOCATION.as_bytes());
                            option_reply(w, option, REP_META_CONTEXT, &v)?;
                        }
                        self.session.allocation = set && selected;
                        option_reply(w, option, REP_ACK, &[])?;
                    }
                }
            }
            OPT_INFO | OPT_GO => match info_request(data) {
                None => option_error(w, option, REP_ERR_INVALID, "malformed info request")?,
                Some((name, _)) if !names_export(name, export) => {
                    option_error(w, option, REP_ERR_UNKNOWN, "no such export")?;
                }
                Some((_, infos)) => {
                    option_reply(
                        w,
                        option,
                        REP_INFO,
                        &info_export(export.size(), self.session),
                    )?;
                    if infos.contains(&INFO_BLOCK_SIZE) {
                        option_reply(w, option, REP_INFO, &info_block_size())?;
                    }
                    option_reply(w, option, REP_ACK, &[])?;
                    if option == OPT_GO {
                        return Ok(Some(Step::Transmission(self.session)));
                    }
                }
            },
            _ => option_reply(w, option, REP_ERR_UNSUP, &[])?,
        }
        Ok(None)
    }
}

/// The handshake without TLS; returns when the client has chosen the export (then
/// transmission starts, with the session returned).
pub fn handshake(
    r: &mut impl Read,
    w: &mut impl Write,
    export: &dyn Export,
) -> Result<Session, End> {
    let mut h = Handshake::greet(r, w, Tls::Off)?;
    match h.options(r, w, export)? {
        Step::Transmission(s) => Ok(s),
        // Only offered with TLS on.
        Step::StartTls => Err(End::Done),
    }
}

fn simple_reply(w: &mut impl Write, error: u32, handle: u64, data: &[u8]) -> io::Result<()> {
    w.write_all(&SIMPLE_REPLY_MAGIC.to_be_bytes())?;
    w.write_all(&error.to_be_bytes())?;
    w.write_all(&handle.to_be_bytes())?;
    w.write_all(data)?;
    w.flush()
}

/// A structured reply chunk's header; its payload follows.
fn chunk_header(
    w: &mut impl Write,
    flags: u16,
    kind: u16,
    handle: u64,
    len: u32,
) -> io::Result<()> {
    w.write_all(&STRUCTURED_REPLY_MAGIC.to_be_bytes())?;
    w.write_all(&flags.to_be_bytes())?;
    w.write_all(&kind.to_be_bytes())?;
    w.write_all(&handle.to_be_bytes())?;
    w.write_all(&len.to_be_bytes())
}

/// A structured error chunk (the last of its reply) with a message for a person.
fn error_chunk(w: &mut impl Write, handle: u64, error: u32, message: &str) -> io::Result<()> {
    let message = &message.as_bytes()[..message.len().min(1024)];
    chunk_header(
        w,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        handle,
        6 + message.len() as u32,
    )?;
    w.write_all(&error.to_be_bytes())?;
    w.write_all(&(message.len() as u16).to_be_bytes())?;
    w.write_all(message)?;
    w.flush()
}

/// The runs covering exactly `len` bytes from `offset` (asking the export until they do; a
/// run it reports past the range is cut, an empty or missing one read as data).
fn runs_covering(export: &dyn Export, offset: u64, len: u64, runs: &mut Vec<Run>) {
    runs.clear();
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let from = runs.len();
        export.allocation(pos, end - pos, MAX_STATUS_DESCRIPTORS, runs);
        let mut got = 0;
        for run in &mut runs[from..] {
            run.len = run.len.min(end - pos - got);
            got += run.len;
        }
        runs.retain(|r| r.len > 0);
        if got == 0 {
            runs.push(Run {
                len: end - pos,
                hole: false,
            });
            got = end - pos;
        }
        pos += got;
    }
}

/// Reading the export for one connection.
struct Transmitter<'e> {
    export: &'e dyn Export,
    session: Session,
    buf: Vec<u8>,
    runs: Vec<Run>,
}

impl Transmitter<'_> {
    fn read(
        &mut self,
        w: &mut impl Write,
        req: &Request,
        offset: u64,
        len: u32,
        on_error: &mut dyn FnMut(&str),
        stats: &mut Stats,
    ) -> io::Result<()> {
        let failed = |on_error: &mut dyn FnMut(&str), at: u64, n: usize, e: &str| {
            on_error(&format!("read of {n} bytes at {at} failed: {e}"));
        };
        if !self.session.structured {
            self.buf.resize(len as usize, 0);
            return match self.export.read(offset, &mut self.buf) {
                Ok(()) => {
                    stats.data_bytes += u64::from(len);
                    simple_reply(w, 0, req.handle, &self.buf)
                }
                Err(e) => {
                    failed(on_error, offset, len as usize, &e);
                    simple_reply(w, EIO, req.handle, &[])
                }
            };
        }
        if len == 0 {
            chunk_header(w, REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.handle, 0)?;
            return w.flush();
        }
        if req.flags & CMD_FLAG_DF != 0 {
            // One chunk: the whole range as data.
            self.runs.clear();
            self.runs.push(Run {
                len: u64::from(len),
                hole: false,
            });
        } else {
            runs_covering(self.export, offset, u64::from(len), &mut self.runs);
        }
        let mut pos = offset;
        let last = self.runs.len() - 1;
        for (i, run) in self.runs.iter().enumerate() {
            let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
            // Within a request of at most MAX_REQUEST_LEN: fits u32.
            let n = run.len as u32;
            if run.hole {
                chunk_header(w, flags, REPLY_TYPE_OFFSET_HOLE, req.handle, 12)?;
                w.write_all(&pos.to_be_bytes())?;
                w.write_all(&n.to_be_bytes())?;
                stats.hole_bytes += run.len;
            } else {
                self.buf.resize(n as usize, 0);
                if let Err(e) = self.export.read(pos, &mut self.buf) {
                    failed(on_error, pos, n as usize, &e);
                    return error_chunk(
                        w,
                        req.handle,
                        EIO,
                        &format!(
                            "blocksnap could not read bytes {pos}..+{n} of the snapshot (the \
                             server's log says why)"
                        ),
                    );
                }
                chunk_header(w, flags, REPLY_TYPE_OFFSET_DATA, req.handle, 8 + n)?;
                w.write_all(&pos.to_be_bytes())?;
                w.write_all(&self.buf)?;
                stats.data_bytes += run.len;
            }
            pos += run.len;
        }
        w.flush()
    }

    fn block_status(
        &mut self,
        w: &mut impl Write,
        req: &Request,
        offset: u64,
        len: u32,
        stats: &mut Stats,
    ) -> io::Result<()> {
        if !self.session.allocation {
            return if self.session.structured {
                error_chunk(w, req.handle, EINVAL, "select base:allocation first")
            } else {
                simple_reply(w, EINVAL, req.handle, &[])
            };
        }
        let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_STATUS_DESCRIPTORS
        };
        self.runs.clear();
        self.export
            .allocation(offset, u64::from(len), max, &mut self.runs);
        // Cut to the request (each then fits u32) and to `max`; never none.
        let mut left = u64::from(len);
        let mut descriptors: Vec<(u32, u32)> = Vec::with_capacity(self.runs.len().min(max));
        for run in &self.runs {
            if left == 0 || descriptors.len() == max {
                break;
            }
            let n = run.len.min(left);
            if n == 0 {
                continue;
            }
            let state = if run.hole { STATE_HOLE | STATE_ZERO } else { 0 };
            match descriptors.last_mut() {
                Some((l, s)) if *s == state => *l += n as u32,
                _ => descriptors.push((n as u32, state)),
            }
            left -= n;
        }
        if descriptors.is_empty() {
            descriptors.push((len, 0));
        }
        stats.status_requests += 1;
        chunk_header(
            w,
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            req.handle,
            4 + 8 * descriptors.len() as u32,
        )?;
        let mut payload = Vec::with_capacity(4 + 8 * descriptors.len());
        payload.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        for (l, s) in descriptors {
            payload.extend_from_slice(&l.to_be_bytes());
            payload.extend_from_slice(&s.to_be_bytes());
        }
        w.write_all(&payload)?;
        w.flush()
    }

    /// A reply without data: simple, or (structured) a final `NONE` chunk or an error chunk.
    fn status(&self, w: &mut impl Write, handle: u64, error: u32) -> io::Result<()> {
        if !self.session.structured {
            return simple_reply(w, error, handle, &[]);
        }
        if error == 0 {
            chunk_header(w, REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, 0)?;
            return w.flush();
        }
        let message = match error {
            EPERM => "the export is read-only",
            EINVAL => "the request lies beyond the export or is malformed",
            _ => "refused",
        };
        error_chunk(w, handle, error, message)
    }
}

/// The transmission phase after a handshake without structured replies (see
/// [`transmission_session`]).
pub fn transmission(
    r: &mut impl Read,
    w: &mut impl Write,
    export: &dyn Export,
    on_error: &mut dyn FnMut(&str),
) -> Result<(), End> {
    transmission_session(
        r,
        w,
        export,
        Session::default(),
        on_error,
        &mut Stats::default(),
    )
}

/// The transmission phase: requests until `NBD_CMD_DISC` or the connection ends, replied to as
/// `session` settled, counted in `stats`. A read that fails is answered `EIO` and told to
/// `on_error`.
pub fn transmission_session(
    r: &mut impl Read,
    w: &mut impl Write,
    export: &dyn Export,
    session: Session,
    on_error: &mut dyn FnMut(&str),
    stats: &mut Stats,
) -> Result<(), End> {
    let mut t = Transmitter {
        export,
        session,
        buf: Vec::new(),
        runs: Vec::new(),
    };
    loop {
        let mut header = [0u8; REQUEST_LEN];
        r.read_exact(&mut header)?;
        let Some(req) = parse_request(&header) else {
            return Err(End::Done);
        };
        stats.requests += 1;
        match req.action(export.size()) {
            Action::Read { offset, len } => t.read(w, &req, offset, len, on_error, stats)?,
            Action::BlockStatus { offset, len } => t.block_status(w, &req, offset, len, stats)?,
            Action::Refuse(code) if req.kind == CMD_READ && session.structured => {
                error_chunk(
                    w,
                    req.handle,
                    code,
                    "the read lies beyond the export or is too long",
                )?;
            }
            Action::Refuse(code) => t.status(w, req.handle, code)?,
            Action::SkipWrite(len) => {
                // The payload follows the request: skip it.
                io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
                t.status(w, req.handle, EPERM)?;
            }
            Action::Ack => t.status(w, req.handle, 0)?,
            Action::End => return Err(End::Done),
        }
    }
}

/// A whole connection without TLS: the handshake, then transmission.
pub fn serve(
    r: &mut impl Read,
    w: &mut impl Write,
    export: &dyn Export,
    on_error: &mut dyn FnMut(&str),
) -> Result<(), End> {
    serve_counted(r, w, export, on_error, &mut Stats::default())
}

/// [`serve`], counting what was sent in `stats`.
pub fn serve_counted(
    r: &mut impl Read,
    w: &mut impl Write,
    export: &dyn Export,
    on_error: &mut dyn FnMut(&str),
    stats: &mut Stats,
) -> Result<(), End> {
    let session = handshake(r, w, export)?;
    transmission_session(r, w, export, session, on_error, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 MiB export whose byte at `i` is `i as u8`; reads past 512 KiB fail.
    struct Pattern;

    impl Export for Pattern {
        fn name(&self) -> &str {
            "snap-0000000000000001"
        }
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), String> {
            if offset >= 512 << 10 {
                return Err("damaged chunk".into());
            }
            for (i, b) in out.iter_mut().enumerate() {
                *b = (offset + i as u64) as u8;
            }
            Ok(())
        }
    }

    fn session(input: &[u8]) -> (Vec<u8>, Vec<String>) {
        let mut r = input;
        let mut w = Vec::new();
        let mut errors = Vec::new();
        let _ = serve(&mut r, &mut w, &Pattern, &mut |e| {
            errors.push(e.to_string())
        });
        (w, errors)
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

    fn go(name: &[u8]) -> Vec<u8> {
        let mut input = u32::from(FLAG_NO_ZEROES).to_be_bytes().to_vec();
        input.extend_from_slice(&IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&OPT_GO.to_be_bytes());
        input.extend_from_slice(&(6 + name.len() as u32).to_be_bytes());
        input.extend_from_slice(&(name.len() as u32).to_be_bytes());
        input.extend_from_slice(name);
        input.extend_from_slice(&0u16.to_be_bytes()); // no info requests
        input
    }

    #[test]
    fn a_go_session_reads_and_refuses_what_it_must() {
        let mut input = go(b"");
        input.extend(request(CMD_READ, 7, 4096, 100));
        input.extend(request(CMD_READ, 8, (1 << 20) - 10, 100)); // past the end
        input.extend(request(CMD_WRITE, 9, 0, 3));
        input.extend_from_slice(b"abc");
        input.extend(request(CMD_READ, 10, 600 << 10, 10)); // fails: EIO
        input.extend(request(CMD_FLUSH, 11, 0, 0));
        input.extend(request(CMD_DISC, 12, 0, 0));
        let (out, errors) = session(&input);
        // Greeting (18), INFO reply (20 + 12), ACK (20), then the replies.
        let replies = &out[18 + 32 + 20..];
        assert_eq!(&replies[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&replies[4..8], &0u32.to_be_bytes());
        assert_eq!(&replies[8..16], &7u64.to_be_bytes());
        assert!(
            replies[16..116]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (4096 + i) as u8)
        );
        let second = &replies[116..];
        assert_eq!(&second[4..8], &EINVAL.to_be_bytes());
        let third = &second[16..];
        assert_eq!(&third[4..8], &EPERM.to_be_bytes());
        let fourth = &third[16..];
        assert_eq!(&fourth[4..8], &EIO.to_be_bytes());
        let fifth = &fourth[16..];
        assert_eq!(&fifth[4..16], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11]);
        assert_eq!(
            fifth.len(),
            16,
            "nothing after the flush's reply: DISC ends it"
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("damaged chunk"), "{errors:?}");
    }

    #[test]
    fn a_wrong_export_name_is_refused_and_an_absurd_option_ends_it() {
        let (out, _) = session(&go(b"other"));
        assert_eq!(
            &out[18 + 8..18 + 16],
            &[0, 0, 0, OPT_GO as u8, 0x80, 0, 0, 6]
        );
        let mut input = 0u32.to_be_bytes().to_vec();
        input.extend_from_slice(&IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&OPT_LIST.to_be_bytes());
        input.extend_from_slice(&u32::MAX.to_be_bytes());
        let (out, _) = session(&input);
        assert_eq!(out.len(), 18, "only the greeting: no 4 GiB option is read");
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let size = 1 << 20;
        let req = |kind, offset, len| Request {
            flags: 0,
            kind,
            handle: 1,
            offset,
            len,
        };
        assert_eq!(
            req(CMD_READ, 0, 10).action(size),
            Action::Read { offset: 0, len: 10 }
        );
        assert_eq!(
            req(CMD_READ, u64::MAX, 10).action(size),
            Action::Refuse(EINVAL)
        );
        assert_eq!(
            req(CMD_READ, 0, u32::MAX).action(u64::MAX),
            Action::Refuse(EINVAL)
        );
        assert_eq!(req(CMD_WRITE, 0, u32::MAX).action(size), Action::End);
        assert_eq!(req(CMD_WRITE, 0, 5).action(size), Action::SkipWrite(5));
        assert_eq!(req(99, 0, 5).action(size), Action::Refuse(EPERM));
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[27] = 9;
        assert_eq!(parse_request(&b).map(|r| r.len), Some(9));
        assert_eq!(info_request_name(&[0, 0, 0, 2, b'a']), None);
        assert_eq!(info_request_name(&[0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(
            info_request_name(&[0, 0, 0, 1, b'a', 0, 0]),
            Some(&b"a"[..])
        );
    }

    #[test]
    fn random_clients_never_panic_the_server() {
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
            let structured = case % 4 == 1;
            if structured {
                input.extend_from_slice(&1u32.to_be_bytes());
                input.extend(option(OPT_STRUCTURED_REPLY, &[]));
                input.extend(option(
                    OPT_SET_META_CONTEXT,
                    &meta(b"", &[b"base:allocation"]),
                ));
                input.extend(option(OPT_GO, &go(b"")[20..]));
            } else if case % 2 == 0 {
                input.extend_from_slice(&0u32.to_be_bytes());
                input.extend_from_slice(&IHAVEOPT.to_be_bytes());
                input.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
                input.extend_from_slice(&0u32.to_be_bytes());
            }
            let len = (next() % 200) as usize;
            for _ in 0..len {
                input.push(next() as u8);
            }
            if case % 3 == 0 || structured {
                for _ in 0..(next() % 4) {
                    let kind = [CMD_READ, CMD_BLOCK_STATUS][(next() % 2) as usize];
                    let len = (next() % (3 << 19)) as u32;
                    input.extend(request_flags(
                        kind,
                        next() as u16,
                        1,
                        next() % (2 << 20),
                        len,
                    ));
                }
            }
            if structured {
                let mut out = Vec::new();
                let _ = serve(&mut &input[..], &mut out, &Sparse::default(), &mut |_| {});
            } else {
                let _ = session(&input);
            }
        }
    }

    /// 1 MiB: data (byte `i` is `i as u8`) at [0, 64 KiB) and [512 KiB, 576 KiB), holes
    /// elsewhere (read as zeros). Reads that touch a hole are counted: the server must send
    /// holes without reading them.
    #[derive(Default)]
    struct Sparse {
        hole_reads: std::cell::Cell<u64>,
    }

    const SPARSE_DATA: [(u64, u64); 2] = [(0, 64 << 10), (512 << 10, 576 << 10)];

    impl Export for Sparse {
        fn name(&self) -> &str {
            "sparse"
        }
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), String> {
            let end = offset + out.len() as u64;
            if !SPARSE_DATA.iter().any(|&(s, e)| s <= offset && end <= e) {
                self.hole_reads.set(self.hole_reads.get() + 1);
            }
            for (i, b) in out.iter_mut().enumerate() {
                let at = offset + i as u64;
                let data = SPARSE_DATA.iter().any(|&(s, e)| s <= at && at < e);
                *b = if data { at as u8 } else { 0 };
            }
            Ok(())
        }
        fn allocation(&self, offset: u64, len: u64, max: usize, out: &mut Vec<Run>) {
            let end = offset + len;
            let mut pos = offset;
            let mut bounds = vec![0u64];
            for (s, e) in SPARSE_DATA {
                bounds.extend([s, e]);
            }
            bounds.push(self.size());
            while pos < end && out.len() < max {
                let i = bounds.partition_point(|&b| b <= pos);
                let next = bounds[i].min(end);
                let hole = !SPARSE_DATA.iter().any(|&(s, e)| s <= pos && pos < e);
                out.push(Run {
                    len: next - pos,
                    hole,
                });
                pos = next;
            }
        }
    }

    fn option(kind: u32, data: &[u8]) -> Vec<u8> {
        let mut v = IHAVEOPT.to_be_bytes().to_vec();
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn meta(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name);
        v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            v.extend_from_slice(&(q.len() as u32).to_be_bytes());
            v.extend_from_slice(q);
        }
        v
    }

    /// Splits option replies off `out`: (option, type, data) each, until `n` are taken.
    fn option_replies(out: &mut &[u8], n: usize) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        for _ in 0..n {
            let b = *out;
            assert_eq!(&b[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
            let option = u32::from_be_bytes(b[8..12].try_into().unwrap());
            let kind = u32::from_be_bytes(b[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
            v.push((option, kind, b[20..20 + len].to_vec()));
            *out = &b[20 + len..];
        }
        v
    }

    /// Splits one structured chunk off `out`: (flags, type, handle, payload).
    fn chunk(out: &mut &[u8]) -> (u16, u16, u64, Vec<u8>) {
        let b = *out;
        assert_eq!(&b[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        let flags = u16::from_be_bytes([b[4], b[5]]);
        let kind = u16::from_be_bytes([b[6], b[7]]);
        let handle = u64::from_be_bytes(b[8..16].try_into().unwrap());
        let len = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
        *out = &b[20 + len..];
        (flags, kind, handle, b[20..20 + len].to_vec())
    }

    fn request_flags(kind: u16, flags: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut v = request(kind, handle, offset, len);
        v[4..6].copy_from_slice(&flags.to_be_bytes());
        v
    }

    #[test]
    fn structured_reads_send_holes_as_holes_and_block_status_tells_them() {
        let mut input = u32::from(FLAG_NO_ZEROES | 1).to_be_bytes().to_vec();
        // Before structured replies, SET_META_CONTEXT is invalid; LIST works.
        input.extend(option(
            OPT_SET_META_CONTEXT,
            &meta(b"", &[b"base:allocation"]),
        ));
        input.extend(option(OPT_LIST_META_CONTEXT, &meta(b"sparse", &[])));
        input.extend(option(OPT_STRUCTURED_REPLY, &[]));
        input.extend(option(
            OPT_SET_META_CONTEXT,
            &meta(b"other", &[b"base:allocation"]),
        ));
        input.extend(option(
            OPT_SET_META_CONTEXT,
            &meta(b"sparse", &[b"qemu:dirty-bitmap:x", b"base:allocation"]),
        ));
        let mut go = 6u32.to_be_bytes().to_vec(); // "sparse"
        go.extend_from_slice(b"sparse");
        go.extend_from_slice(&1u16.to_be_bytes());
        go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        input.extend(option(OPT_GO, &go));
        // A read across data, hole, data; a read of a hole alone; block status of it all.
        input.extend(request(CMD_READ, 1, 60 << 10, 460 << 10));
        input.extend(request(CMD_READ, 2, 100 << 10, 4096));
        input.extend(request(CMD_BLOCK_STATUS, 3, 0, 1 << 20));
        input.extend(request_flags(
            CMD_BLOCK_STATUS,
            CMD_FLAG_REQ_ONE,
            4,
            4096,
            1 << 19,
        ));
        input.extend(request(CMD_BLOCK_STATUS, 5, 1 << 20, 1)); // past the end
        input.extend(request(CMD_READ, 6, 1 << 20, 1)); // past the end
        input.extend(request_flags(CMD_READ, CMD_FLAG_DF, 7, 0, 100));
        input.extend(request(CMD_WRITE, 8, 0, 2));
        input.extend_from_slice(b"xy");
        input.extend(request(CMD_FLUSH, 9, 0, 0));
        input.extend(request(CMD_DISC, 10, 0, 0));

        let mut out = Vec::new();
        let mut stats = Stats::default();
        let sparse = Sparse::default();
        let r = serve_counted(
            &mut &input[..],
            &mut out,
            &sparse,
            &mut |e| panic!("{e}"),
            &mut stats,
        );
        assert_eq!(sparse.hole_reads.get(), 0, "no hole was read");
        assert!(matches!(r, Err(End::Done)), "{r:?}");
        let mut o = &out[18..];
        let replies = option_replies(&mut o, 10);
        let kinds: Vec<u32> = replies.iter().map(|r| r.1).collect();
        assert_eq!(
            kinds,
            [
                REP_ERR_INVALID, // SET before structured replies
                REP_META_CONTEXT,
                REP_ACK,
                REP_ACK,         // structured replies
                REP_ERR_UNKNOWN, // another export
                REP_META_CONTEXT,
                REP_ACK,
                REP_INFO,
                REP_INFO,
                REP_ACK
            ]
        );
        assert_eq!(&replies[1].2[4..], b"base:allocation");
        assert_eq!(&replies[5].2[..4], &BASE_ALLOCATION_ID.to_be_bytes());
        assert_eq!(&replies[5].2[4..], b"base:allocation");
        let flags = u16::from_be_bytes([replies[7].2[10], replies[7].2[11]]);
        let want = FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN | FLAG_SEND_DF;
        assert_eq!(flags & want, want);
        assert_eq!(&replies[8].2[..2], &INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(&replies[8].2[10..14], &MAX_REQUEST_LEN.to_be_bytes());

        let u64_at = |p: &[u8], i: usize| u64::from_be_bytes(p[i..i + 8].try_into().unwrap());
        let u32_at = |p: &[u8], i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap());
        // 1: data, hole, data; the data is the export's.
        let (f, k, h, p) = chunk(&mut o);
        assert_eq!(
            (f, k, h, u64_at(&p, 0), p.len()),
            (0, REPLY_TYPE_OFFSET_DATA, 1, 60 << 10, 8 + 4096)
        );
        assert!(
            p[8..]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == ((60 << 10) + i) as u8)
        );
        let (f, k, _, p) = chunk(&mut o);
        assert_eq!(
            (f, k, u64_at(&p, 0), u32_at(&p, 8)),
            (0, REPLY_TYPE_OFFSET_HOLE, 64 << 10, 448 << 10)
        );
        let (f, k, _, p) = chunk(&mut o);
        assert_eq!(
            (f, k, u64_at(&p, 0), p.len()),
            (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 512 << 10, 8 + 8192)
        );
        // 2: a hole alone.
        let (f, k, h, p) = chunk(&mut o);
        assert_eq!(
            (f, k, h, u64_at(&p, 0), u32_at(&p, 8)),
            (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_HOLE, 2, 100 << 10, 4096)
        );
        // 3: the whole map.
        let (f, k, h, p) = chunk(&mut o);
        assert_eq!(
            (f, k, h, u32_at(&p, 0)),
            (
                REPLY_FLAG_DONE,
                REPLY_TYPE_BLOCK_STATUS,
                3,
                BASE_ALLOCATION_ID
            )
        );
        let descriptors: Vec<(u32, u32)> = p[4..]
            .chunks(8)
            .map(|d| (u32_at(d, 0), u32_at(d, 4)))
            .collect();
        let hz = STATE_HOLE | STATE_ZERO;
        assert_eq!(
            descriptors,
            [
                (64 << 10, 0),
                (448 << 10, hz),
                (64 << 10, 0),
                (448 << 10, hz)
            ]
        );
        // 4: REQ_ONE: one descriptor, within the request.
        let (_, k, h, p) = chunk(&mut o);
        assert_eq!(
            (k, h, p.len(), u32_at(&p, 4), u32_at(&p, 8)),
            (REPLY_TYPE_BLOCK_STATUS, 4, 12, 60 << 10, 0)
        );
        // 5, 6: past the end: EINVAL as error chunks.
        for want in [5, 6] {
            let (f, k, h, p) = chunk(&mut o);
            assert_eq!(
                (f, k, h, u32_at(&p, 0)),
                (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, want, EINVAL)
            );
        }
        // 7: DF: one data chunk.
        let (f, k, h, p) = chunk(&mut o);
        assert_eq!(
            (f, k, h, p.len()),
            (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 7, 108)
        );
        // 8: a write is refused; 9: a flush succeeds.
        let (_, k, h, p) = chunk(&mut o);
        assert_eq!((k, h, u32_at(&p, 0)), (REPLY_TYPE_ERROR, 8, EPERM));
        let (f, k, h, p) = chunk(&mut o);
        assert_eq!((f, k, h, p.len()), (REPLY_FLAG_DONE, REPLY_TYPE_NONE, 9, 0));
        assert!(o.is_empty(), "nothing after DISC");
        assert_eq!(
            stats,
            Stats {
                requests: 10,
                data_bytes: 4096 + 8192 + 100,
                hole_bytes: (448 << 10) + 4096,
                status_requests: 2,
            }
        );
    }

    #[test]
    fn with_tls_required_every_option_before_starttls_is_refused() {
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend(option(OPT_LIST, &[]));
        input.extend(option(OPT_STRUCTURED_REPLY, &[]));
        input.extend(option(OPT_GO, &go(b"")[20..]));
        input.extend(option(OPT_STARTTLS, b"x"));
        input.extend(option(OPT_STARTTLS, &[]));
        let mut out = Vec::new();
        let mut r = &input[..];
        let mut h = Handshake::greet(&mut r, &mut out, Tls::Required).unwrap();
        let step = h.options(&mut r, &mut out, &Sparse::default()).unwrap();
        assert!(matches!(step, Step::StartTls));
        let mut o = &out[18..];
        let kinds: Vec<u32> = option_replies(&mut o, 5).iter().map(|r| r.1).collect();
        assert_eq!(
            kinds,
            [
                REP_ERR_TLS_REQD,
                REP_ERR_TLS_REQD,
                REP_ERR_TLS_REQD,
                REP_ERR_INVALID,
                REP_ACK
            ]
        );
        // "TLS" running: options are served; a second STARTTLS is invalid.
        h.tls_started();
        let mut input = option(OPT_STARTTLS, &[]);
        input.extend(option(OPT_GO, &go(b"sparse")[20..]));
        let mut out = Vec::new();
        let step = h
            .options(&mut &input[..], &mut out, &Sparse::default())
            .unwrap();
        assert!(matches!(step, Step::Transmission(s) if !s.structured));
        let mut o = &out[..];
        let kinds: Vec<u32> = option_replies(&mut o, 3).iter().map(|r| r.1).collect();
        assert_eq!(kinds, [REP_ERR_INVALID, REP_INFO, REP_ACK]);

        // EXPORT_NAME before TLS ends the connection: it cannot be refused otherwise.
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend(option(OPT_EXPORT_NAME, &[]));
        let mut out = Vec::new();
        let mut r = &input[..];
        let mut h = Handshake::greet(&mut r, &mut out, Tls::Required).unwrap();
        assert!(matches!(
            h.options(&mut r, &mut out, &Sparse::default()),
            Err(End::Done)
        ));
        assert_eq!(out.len(), 18, "nothing but the greeting");
        // Without TLS, STARTTLS is unsupported; unknown client flags end it.
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend(option(OPT_STARTTLS, &[]));
        let mut out = Vec::new();
        let _ = serve(&mut &input[..], &mut out, &Sparse::default(), &mut |_| {});
        assert_eq!(option_replies(&mut &out[18..], 1)[0].1, REP_ERR_UNSUP);
        let mut out = Vec::new();
        let _ = serve(
            &mut &8u32.to_be_bytes()[..],
            &mut out,
            &Sparse::default(),
            &mut |_| {},
        );
        assert_eq!(out.len(), 18);
    }

    #[test]
    fn meta_requests_and_info_requests_are_checked() {
        assert_eq!(
            meta_request(&meta(b"a", &[b"base:"])),
            Some((&b"a"[..], vec![&b"base:"[..]]))
        );
        assert_eq!(meta_request(&meta(b"", &[])), Some((&b""[..], vec![])));
        let mut v = meta(b"a", &[b"base:"]);
        v.push(0);
        assert_eq!(meta_request(&v), None, "bytes left over");
        let mut v = meta(b"a", &[]);
        v[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(meta_request(&v), None, "a count that cannot fit");
        assert_eq!(meta_request(&[0, 0, 0, 9]), None);
        assert_eq!(
            info_request(&[0, 0, 0, 0, 0, 1, 0, 3]),
            Some((&b""[..], vec![3]))
        );
        assert_eq!(info_request(&[0, 0, 0, 0, 0, 2, 0, 3]), None);
        assert_eq!(info_request(&[0, 0, 0, 0]), Some((&b""[..], vec![])));
        assert!(lists_allocation(&[]) && lists_allocation(&[b"base:"]));
        assert!(!lists_allocation(&[b"qemu:"]));
    }
}
