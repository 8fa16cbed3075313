//! An NBD client for reading a disk another server exports (`qemu-nbd`,
//! `qemu-storage-daemon`, a running QEMU's NBD server): the fixed-newstyle handshake with
//! structured replies and metadata contexts (`base:allocation`, `qemu:dirty-bitmap:NAME`),
//! `NBD_CMD_BLOCK_STATUS`, and reads with several requests in flight on one connection.
//!
//! No Rust binding of libnbd is published on crates.io, and the `nbd` crate knows neither
//! structured replies nor block status, so the client is written here. Every byte from the
//! server is untrusted: lengths are bounded before anything is allocated ([`MAX_OPTION_REPLY`],
//! [`crate::MAX_REQUEST_LEN`]), replies are matched to requests by handle, read data must lie inside
//! the request, block status must describe the range asked for; anything else is an error
//! ([`ClientError`]), never a panic (`fuzz/fuzz_targets/nbd_client.rs` feeds it arbitrary
//! server bytes).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};

use crate::{CMD_DISC, CMD_READ, FLAG_NO_ZEROES, IHAVEOPT, OPT_GO, REQUEST_MAGIC};
use crate::{OPT_ABORT, SIMPLE_REPLY_MAGIC};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const INFO_EXPORT: u16 = 0;

/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// The metadata context of allocation: flags [`STATE_HOLE`] and [`STATE_ZERO`].
pub const BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation`: the range is not allocated.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation`: the range reads as zeros.
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:NAME`: the range is dirty.
pub const STATE_DIRTY: u32 = 1;

/// Longest option reply accepted (an export's information, a context's name, an error
/// message).
pub const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Replies a handshake takes before giving up (a server that never acknowledges).
const MAX_OPTION_REPLIES: usize = 64;
/// Length of one read request: reads are cut into requests of this size, all sent before the
/// first reply is read.
pub const READ_REQUEST_LEN: usize = 256 << 10;
/// Longest range one block status request asks about.
pub const BLOCK_STATUS_LEN: u32 = 1 << 30;

/// What went wrong talking to an NBD server.
#[derive(Debug)]
pub enum ClientError {
    /// The connection failed (or closed early).
    Io(io::Error),
    /// The server sent something the protocol does not allow.
    Protocol(String),
    /// The server refused something, in its own words.
    Refused(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                write!(f, "the server closed the connection")
            }
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Protocol(m) => write!(f, "the server broke the NBD protocol: {m}"),
            ClientError::Refused(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

fn protocol(m: impl Into<String>) -> ClientError {
    ClientError::Protocol(m.into())
}

type Result<T> = std::result::Result<T, ClientError>;

/// One block status descriptor: `len` bytes with `flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Bytes it covers.
    pub len: u64,
    /// The context's flags for them.
    pub flags: u32,
}

/// A connection in transmission phase.
pub struct Client<S: Read + Write> {
    stream: S,
    size: u64,
    structured: bool,
    /// Negotiated metadata contexts: name to id.
    contexts: HashMap<String, u32>,
    next_handle: u64,
}

impl<S: Read + Write> fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("size", &self.size)
            .field("structured", &self.structured)
            .field("contexts", &self.contexts)
            .finish()
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_be_bytes(a)
}

/// An option reply: its type and data.
struct OptionReply {
    kind: u32,
    data: Vec<u8>,
}

fn send_option(w: &mut impl Write, option: u32, data: &[u8]) -> Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    w.write_all(&m)?;
    w.flush()?;
    Ok(())
}

fn read_option_reply(r: &mut impl Read, option: u32) -> Result<OptionReply> {
    let mut h = [0u8; 20];
    r.read_exact(&mut h)?;
    if u64_at(&h, 0) != OPTION_REPLY_MAGIC {
        return Err(protocol("an option reply without the reply magic"));
    }
    if u32_at(&h, 8) != option {
        return Err(protocol(format!(
            "a reply to option {} where {option} was asked",
            u32_at(&h, 8)
        )));
    }
    let kind = u32_at(&h, 12);
    let len = u32_at(&h, 16);
    if len > MAX_OPTION_REPLY {
        return Err(protocol(format!(
            "an option reply of {len} bytes (at most {MAX_OPTION_REPLY})"
        )));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data)?;
    Ok(OptionReply { kind, data })
}

/// An option's error reply, in words.
fn option_error(what: &str, reply: &OptionReply) -> ClientError {
    let msg = String::from_utf8_lossy(&reply.data);
    let kind = match reply.kind {
        REP_ERR_UNSUP => "unsupported",
        0x8000_0002 => "forbidden by the server's policy",
        0x8000_0003 => "invalid",
        0x8000_0005 => "needs TLS, which blocksnap's client does not speak",
        REP_ERR_UNKNOWN => "no such export",
        0x8000_0007 => "the server is shutting down",
        _ => "refused",
    };
    let msg = msg.trim();
    ClientError::Refused(if msg.is_empty() {
        format!("{what}: {kind}")
    } else {
        format!("{what}: {kind} ({msg})")
    })
}

/// The u32-length-prefixed bytes of `s`.
fn put_str(v: &mut Vec<u8>, s: &[u8]) {
    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    v.extend_from_slice(s);
}

impl<S: Read + Write> Client<S> {
    /// Opens export `name` over `stream` (fresh from the server), asking for structured
    /// replies and the metadata `contexts` (none of them may be refused: a server without
    /// `base:allocation` still gives its data, but one without a dirty bitmap asked for cannot
    /// give what was asked).
    pub fn handshake(mut stream: S, name: &str, contexts: &[&str]) -> Result<Client<S>> {
        let mut g = [0u8; 18];
        stream.read_exact(&mut g)?;
        if u64_at(&g, 0) != NBDMAGIC {
            return Err(protocol("no NBDMAGIC greeting: is this an NBD server?"));
        }
        if u64_at(&g, 8) != IHAVEOPT {
            return Err(protocol(
                "an oldstyle server (no IHAVEOPT): it cannot name exports, give metadata or structured replies",
            ));
        }
        let flags = u16_at(&g, 16);
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(protocol("a server without fixed newstyle negotiation"));
        }
        let no_zeroes = flags & FLAG_NO_ZEROES != 0;
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE)
            | if no_zeroes {
                u32::from(FLAG_NO_ZEROES)
            } else {
                0
            };
        stream.write_all(&client_flags.to_be_bytes())?;

        // Structured replies: needed for block status; without them reads still work.
        send_option(&mut stream, OPT_STRUCTURED_REPLY, &[])?;
        let r = read_option_reply(&mut stream, OPT_STRUCTURED_REPLY)?;
        let structured = match r.kind {
            REP_ACK => true,
            k if k & 0x8000_0000 != 0 => false,
            k => {
                return Err(protocol(format!(
                    "reply {k} to the structured reply option"
                )));
            }
        };

        let mut ids = HashMap::new();
        if structured && !contexts.is_empty() {
            let mut d = Vec::new();
            put_str(&mut d, name.as_bytes());
            d.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
            for c in contexts {
                put_str(&mut d, c.as_bytes());
            }
            send_option(&mut stream, OPT_SET_META_CONTEXT, &d)?;
            for _ in 0..MAX_OPTION_REPLIES {
                let r = read_option_reply(&mut stream, OPT_SET_META_CONTEXT)?;
                match r.kind {
                    REP_ACK => break,
                    REP_META_CONTEXT if r.data.len() >= 4 => {
                        let id = u32_at(&r.data, 0);
                        let ctx = String::from_utf8_lossy(&r.data[4..]).into_owned();
                        if !contexts.contains(&ctx.as_str()) {
                            return Err(protocol(format!(
                                "metadata context '{ctx}', which was not asked for"
                            )));
                        }
                        ids.insert(ctx, id);
                    }
                    k if k & 0x8000_0000 != 0 => {
                        // No contexts at all: as if none were granted.
                        if r.kind != REP_ERR_UNSUP {
                            return Err(option_error("setting metadata contexts", &r));
                        }
                        break;
                    }
                    k => return Err(protocol(format!("reply {k} to the metadata option"))),
                }
            }
        }

        let mut d = Vec::new();
        put_str(&mut d, name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        send_option(&mut stream, OPT_GO, &d)?;
        let mut size = None;
        for i in 0.. {
            if i == MAX_OPTION_REPLIES {
                return Err(protocol("no end to the replies of NBD_OPT_GO"));
            }
            let r = read_option_reply(&mut stream, OPT_GO)?;
            match r.kind {
                REP_ACK => break,
                REP_INFO if r.data.len() >= 2 && u16_at(&r.data, 0) == INFO_EXPORT => {
                    if r.data.len() < 12 {
                        return Err(protocol("a short NBD_INFO_EXPORT"));
                    }
                    size = Some(u64_at(&r.data, 2));
                }
                REP_INFO => {}
                k if k & 0x8000_0000 != 0 => {
                    let _ = send_option(&mut stream, OPT_ABORT, &[]);
                    return Err(option_error(&format!("export '{name}'"), &r));
                }
                k => return Err(protocol(format!("reply {k} to NBD_OPT_GO"))),
            }
        }
        let size = size.ok_or_else(|| protocol("NBD_OPT_GO ended without the export's size"))?;
        Ok(Client {
            stream,
            size,
            structured,
            contexts: ids,
            next_handle: 1,
        })
    }

    /// The export's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The id of a negotiated metadata context.
    pub fn context(&self, name: &str) -> Option<u32> {
        self.contexts.get(name).copied()
    }

    fn request(&mut self, kind: u16, flags: u16, offset: u64, len: u32) -> Result<u64> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut m = [0u8; crate::REQUEST_LEN];
        m[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m[4..6].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&kind.to_be_bytes());
        m[8..16].copy_from_slice(&handle.to_be_bytes());
        m[16..24].copy_from_slice(&offset.to_be_bytes());
        m[24..28].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&m)?;
        Ok(handle)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(ClientError::Refused(format!(
                "bytes {offset}..+{len} are past the end of the {}-byte export",
                self.size
            )));
        }
        Ok(())
    }

    /// Fills `buf` with the export's bytes at `offset`: requests of at most
    /// [`READ_REQUEST_LEN`] bytes, all sent before the first reply is read, their replies
    /// taken in whatever order the server sends them.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        // A server that leaves bytes of a reply undescribed gives zeros there, never what the
        // buffer held before.
        buf.fill(0);
        let mut pending: HashMap<u64, (usize, usize)> = HashMap::new();
        let mut at = 0usize;
        while at < buf.len() {
            let n = (buf.len() - at).min(READ_REQUEST_LEN);
            let h = self.request(CMD_READ, 0, offset + at as u64, n as u32)?;
            pending.insert(h, (at, n));
            at += n;
        }
        self.stream.flush()?;
        let mut error = None;
        while !pending.is_empty() {
            let (handle, done) = self.read_reply_part(buf, offset, &pending, &mut error)?;
            if done {
                pending.remove(&handle);
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads one reply (or one chunk of a structured reply) to a pending read; returns its
    /// handle and whether that request is answered in full. A server error is kept in
    /// `error` (the other replies are still read, so the connection stays usable).
    fn read_reply_part(
        &mut self,
        buf: &mut [u8],
        base: u64,
        pending: &HashMap<u64, (usize, usize)>,
        error: &mut Option<ClientError>,
    ) -> Result<(u64, bool)> {
        let mut m = [0u8; 4];
        self.stream.read_exact(&mut m)?;
        let magic = u32::from_be_bytes(m);
        if magic == SIMPLE_REPLY_MAGIC {
            let mut h = [0u8; 12];
            self.stream.read_exact(&mut h)?;
            let (err, handle) = (u32_at(&h, 0), u64_at(&h, 4));
            let &(at, n) = pending
                .get(&handle)
                .ok_or_else(|| protocol(format!("a reply to handle {handle}, never sent")))?;
            if err != 0 {
                error.get_or_insert(ClientError::Refused(format!(
                    "reading bytes {}..+{n} failed on the server (error {err})",
                    base + at as u64
                )));
            } else {
                self.stream.read_exact(&mut buf[at..at + n])?;
            }
            return Ok((handle, true));
        }
        if magic != STRUCTURED_REPLY_MAGIC || !self.structured {
            return Err(protocol(format!("a reply with magic {magic:#x}")));
        }
        let mut h = [0u8; 16];
        self.stream.read_exact(&mut h)?;
        let (flags, kind, handle, len) =
            (u16_at(&h, 0), u16_at(&h, 2), u64_at(&h, 4), u32_at(&h, 12));
        let &(at, n) = pending
            .get(&handle)
            .ok_or_else(|| protocol(format!("a reply to handle {handle}, never sent")))?;
        let start = base + at as u64;
        let done = flags & REPLY_FLAG_DONE != 0;
        match kind {
            REPLY_TYPE_NONE if len == 0 => {}
            REPLY_TYPE_OFFSET_DATA if len >= 8 => {
                let mut o = [0u8; 8];
                self.stream.read_exact(&mut o)?;
                let off = u64::from_be_bytes(o);
                let dlen = u64::from(len - 8);
                let inside =
                    off >= start && off.checked_add(dlen).is_some_and(|e| e <= start + n as u64);
                if !inside {
                    return Err(protocol(format!(
                        "data for bytes {off}..+{dlen}, outside the read of {start}..+{n}"
                    )));
                }
                let i = at + (off - start) as usize;
                self.stream.read_exact(&mut buf[i..i + dlen as usize])?;
            }
            REPLY_TYPE_OFFSET_HOLE if len == 12 => {
                let mut p = [0u8; 12];
                self.stream.read_exact(&mut p)?;
                let (off, hlen) = (u64_at(&p, 0), u64::from(u32_at(&p, 8)));
                let inside =
                    off >= start && off.checked_add(hlen).is_some_and(|e| e <= start + n as u64);
                if !inside {
                    return Err(protocol(format!(
                        "a hole at bytes {off}..+{hlen}, outside the read of {start}..+{n}"
                    )));
                }
                let i = at + (off - start) as usize;
                buf[i..i + hlen as usize].fill(0);
            }
            k if k & REPLY_TYPE_ERROR_BIT != 0 => {
                let msg = self.read_error_payload(len)?;
                error.get_or_insert(ClientError::Refused(format!(
                    "reading bytes {start}..+{n} failed on the server: {msg}"
                )));
            }
            k => {
                return Err(protocol(format!(
                    "a reply chunk of type {k} and {len} bytes to a read"
                )));
            }
        }
        Ok((handle, done))
    }

    /// An error chunk's payload (error, message length, message, maybe an offset), in words.
    fn read_error_payload(&mut self, len: u32) -> Result<String> {
        if !(6..=MAX_OPTION_REPLY).contains(&len) {
            return Err(protocol(format!("an error chunk of {len} bytes")));
        }
        let mut p = vec![0u8; len as usize];
        self.stream.read_exact(&mut p)?;
        let err = u32_at(&p, 0);
        let mlen = usize::from(u16_at(&p, 4));
        let msg = p
            .get(6..6 + mlen)
            .map(|m| String::from_utf8_lossy(m).trim().to_string())
            .unwrap_or_default();
        Ok(if msg.is_empty() {
            format!("error {err}")
        } else {
            format!("{msg} (error {err})")
        })
    }

    /// The block status of `len` bytes at `offset` (at most [`BLOCK_STATUS_LEN`]) in the
    /// negotiated context `context`: descriptors from `offset` on, covering at least one byte
    /// and at most the range asked (a longer last one is cut to it).
    pub fn block_status(&mut self, context: &str, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let id = self.context(context).ok_or_else(|| {
            ClientError::Refused(format!(
                "the server did not grant metadata context '{context}'"
            ))
        })?;
        let len = len
            .min(u64::from(BLOCK_STATUS_LEN))
            .min(self.size.saturating_sub(offset));
        if len == 0 {
            return Err(ClientError::Refused(format!(
                "block status at byte {offset}, the end of the {}-byte export",
                self.size
            )));
        }
        self.check_range(offset, len)?;
        let handle = self.request(CMD_BLOCK_STATUS, 0, offset, len as u32)?;
        self.stream.flush()?;
        let mut got: Option<Vec<Extent>> = None;
        let mut error = None;
        loop {
            let mut m = [0u8; 4];
            self.stream.read_exact(&mut m)?;
            let magic = u32::from_be_bytes(m);
            if magic == SIMPLE_REPLY_MAGIC {
                // Only an error may come as a simple reply to block status.
                let mut h = [0u8; 12];
                self.stream.read_exact(&mut h)?;
                let err = u32_at(&h, 0);
                if u64_at(&h, 4) != handle || err == 0 {
                    return Err(protocol("a simple reply to a block status request"));
                }
                return Err(ClientError::Refused(format!(
                    "block status of bytes {offset}..+{len} failed on the server (error {err})"
                )));
            }
            if magic != STRUCTURED_REPLY_MAGIC {
                return Err(protocol(format!("a reply with magic {magic:#x}")));
            }
            let mut h = [0u8; 16];
            self.stream.read_exact(&mut h)?;
            let (flags, kind, h_handle, plen) =
                (u16_at(&h, 0), u16_at(&h, 2), u64_at(&h, 4), u32_at(&h, 12));
            if h_handle != handle {
                return Err(protocol(format!(
                    "a reply to handle {h_handle}, never sent"
                )));
            }
            match kind {
                REPLY_TYPE_NONE if plen == 0 => {}
                REPLY_TYPE_BLOCK_STATUS if plen >= 12 && (plen - 4) % 8 == 0 => {
                    if plen > MAX_OPTION_REPLY * 16 {
                        return Err(protocol(format!("a block status of {plen} bytes")));
                    }
                    let mut p = vec![0u8; plen as usize];
                    self.stream.read_exact(&mut p)?;
                    if u32_at(&p, 0) == id {
                        let mut v = Vec::new();
                        let mut covered = 0u64;
                        for d in p[4..].chunks_exact(8) {
                            let dl = u64::from(u32_at(d, 0));
                            if dl == 0 {
                                return Err(protocol("a block status descriptor of 0 bytes"));
                            }
                            if covered >= len {
                                break;
                            }
                            let dl = dl.min(len - covered);
                            covered += dl;
                            v.push(Extent {
                                len: dl,
                                flags: u32_at(d, 4),
                            });
                        }
                        got = Some(v);
                    }
                }
                k if k & REPLY_TYPE_ERROR_BIT != 0 => {
                    let msg = self.read_error_payload(plen)?;
                    error.get_or_insert(ClientError::Refused(format!(
                        "block status of bytes {offset}..+{len} failed on the server: {msg}"
                    )));
                }
                k => {
                    return Err(protocol(format!(
                        "a reply chunk of type {k} and {plen} bytes to block status"
                    )));
                }
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        got.ok_or_else(|| protocol(format!("no block status for context '{context}'")))
    }

    /// Ends the connection politely.
    pub fn disconnect(mut self) {
        if self.request(CMD_DISC, 0, 0, 0).is_ok() {
            let _ = self.stream.flush();
        }
    }
}

/// Where an NBD export is: `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A TCP address: host and port (10809 if not given).
    Tcp {
        /// Host name or address (an IPv6 address without its brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket's path.
    Unix(String),
}

/// A parsed NBD URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    /// The server.
    pub address: Address,
    /// The export's name (percent-decoded; empty for the server's default export).
    pub export: String,
}

/// Whether `s` looks like an NBD URI (so it is not a file name).
pub fn is_uri(s: &str) -> bool {
    s.starts_with("nbd://") || s.starts_with("nbd+unix://")
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("'{s}' has a % not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' is not UTF-8 once decoded"))
}

impl std::str::FromStr for Uri {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Uri, String> {
        let bad = |why: &str| {
            format!(
                "{s} is not an NBD URI ({why}): give nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH"
            )
        };
        if let Some(rest) = s.strip_prefix("nbd://") {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            if path.contains('?') {
                return Err(bad("nbd:// takes no query"));
            }
            let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                let (h, after) = v6.split_once(']').ok_or_else(|| bad("an unclosed ["))?;
                (h.to_string(), after.strip_prefix(':'))
            } else {
                match authority.rsplit_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p)),
                    None => (authority.to_string(), None),
                }
            };
            if host.is_empty() {
                return Err(bad("no host"));
            }
            let port = match port {
                None => 10809,
                Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
            };
            Ok(Uri {
                address: Address::Tcp { host, port },
                export: percent_decode(path).map_err(|e| bad(&e))?,
            })
        } else if let Some(rest) = s.strip_prefix("nbd+unix://") {
            let path = rest
                .strip_prefix('/')
                .ok_or_else(|| bad("nbd+unix:// takes no host: nbd+unix:///EXPORT?socket=PATH"))?;
            let (export, query) = path.split_once('?').ok_or_else(|| bad("no ?socket=PATH"))?;
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .ok_or_else(|| bad("no socket=PATH in its query"))?;
            let socket = percent_decode(socket).map_err(|e| bad(&e))?;
            if socket.is_empty() {
                return Err(bad("an empty socket path"));
            }
            Ok(Uri {
                address: Address::Unix(socket),
                export: percent_decode(export).map_err(|e| bad(&e))?,
            })
        } else {
            Err(bad("it starts with neither nbd:// nor nbd+unix://"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        let u: Uri = "nbd://127.0.0.1:10900/disk%20a".parse().unwrap();
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 10900
            }
        );
        assert_eq!(u.export, "disk a");
        let u: Uri = "nbd://[::1]/x".parse().unwrap();
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "::1".into(),
                port: 10809
            }
        );
        let u: Uri = "nbd+unix:///vm?socket=/run/q.sock".parse().unwrap();
        assert_eq!(u.address, Address::Unix("/run/q.sock".into()));
        assert_eq!(u.export, "vm");
        for bad in [
            "nbd://",
            "nbd://h:port/x",
            "nbd+unix://host/x?socket=/s",
            "nbd+unix:///x",
            "nbd://h/x%2",
            "http://h/x",
        ] {
            assert!(bad.parse::<Uri>().is_err(), "{bad}");
        }
    }

    /// A byte stream: reads from `input`, writes are kept.
    struct Duplex<'a> {
        input: &'a [u8],
        output: Vec<u8>,
    }
    impl Read for Duplex<'_> {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.input.read(b)
        }
    }
    impl Write for Duplex<'_> {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn garbage_from_a_server_is_an_error() {
        for input in [&b""[..], b"NBDMAGIC", &[0xff; 64]] {
            let d = Duplex {
                input,
                output: Vec::new(),
            };
            assert!(Client::handshake(d, "x", &[BASE_ALLOCATION]).is_err());
        }
    }
}
