//! The NBD protocol of blocksnap's read-only export, apart from sockets and the store: every
//! byte a client sends is parsed here, so the parser can be tested and fuzzed on its own
//! (`fuzz/fuzz_targets/nbd_session.rs`, `nbd_request.rs`).
//!
//! The server speaks the fixed-newstyle handshake (`NBD_OPT_EXPORT_NAME`, `NBD_OPT_INFO`,
//! `NBD_OPT_GO`, `NBD_OPT_LIST`, `NBD_OPT_ABORT`; everything else is refused as unsupported) and
//! simple replies: `NBD_CMD_READ`, `NBD_CMD_FLUSH` (a no-op) and `NBD_CMD_DISC`; writes and
//! trims get `EPERM`. Every field from the network is checked before use: a request out of
//! range gets `EINVAL`, a malformed one ends the connection, no length from the client sizes an
//! allocation beyond [`MAX_OPTION_LEN`] or [`MAX_REQUEST_LEN`]; nothing panics.
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
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic that starts every request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic that starts every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag (and client flag): no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;
const FLAG_HAS_FLAGS: u16 = 1;
const FLAG_READ_ONLY: u16 = 2;
const FLAG_SEND_FLUSH: u16 = 4;

/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const INFO_EXPORT: u16 = 0;

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;

/// Error code of a refused write or trim.
pub const EPERM: u32 = 1;
/// Error code of a read that failed.
pub const EIO: u32 = 5;
/// Error code of a request out of range.
pub const EINVAL: u32 = 22;

/// Longest option payload accepted (an export name and a few info requests).
pub const MAX_OPTION_LEN: u32 = 4096;
/// Longest read served in one request (qemu asks for at most 32 MiB).
pub const MAX_REQUEST_LEN: u32 = 32 << 20;
/// Length of a request header.
pub const REQUEST_LEN: usize = 28;

/// What a connection reads from.
pub trait Export {
    /// The export's name (an empty name asks for it too).
    fn name(&self) -> &str;
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Fills `out` with the bytes at `offset` (the range was checked to lie within the export).
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), String>;
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
    /// Command flags (ignored: no command of this server has any).
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
    let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
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
            CMD_WRITE if self.len > MAX_REQUEST_LEN => Action::End,
            CMD_WRITE => Action::SkipWrite(self.len),
            CMD_DISC => Action::End,
            CMD_FLUSH => Action::Ack,
            _ => Action::Refuse(EPERM),
        }
    }
}

/// The export name an `NBD_OPT_INFO` or `NBD_OPT_GO` payload asks for: u32 name length, the
/// name, then info requests (ignored); `None` if the length runs past the payload.
pub fn info_request_name(data: &[u8]) -> Option<&[u8]> {
    let n = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    data.get(4..4usize.checked_add(n)?)
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
fn names_export(name: &[u8], export: &dyn Export) -> bool {
    name.is_empty() || name == export.name().as_bytes()
}

/// The handshake; returns when the client has chosen the export (then transmission starts).
pub fn handshake(r: &mut impl Read, w: &mut impl Write, export: &dyn Export) -> Result<(), End> {
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
                w.write_all(&export.size().to_be_bytes())?;
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
                let name = export.name().as_bytes();
                let mut v = (name.len() as u32).to_be_bytes().to_vec();
                v.extend_from_slice(name);
                option_reply(w, option, REP_SERVER, &v)?;
                option_reply(w, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => match info_request_name(&data) {
                None => option_reply(w, option, REP_ERR_INVALID, &[])?,
                Some(name) if !names_export(name, export) => {
                    option_reply(w, option, REP_ERR_UNKNOWN, &[])?;
                }
                Some(_) => {
                    option_reply(w, option, REP_INFO, &info_export(export.size()))?;
                    option_reply(w, option, REP_ACK, &[])?;
                    if option == OPT_GO {
                        return Ok(());
                    }
                }
            },
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

/// The transmission phase: requests until `NBD_CMD_DISC` or the connection ends. A read that
/// fails is answered `EIO` and told to `on_error`.
pub fn transmission(
    r: &mut impl Read,
    w: &mut impl Write,
    export: &dyn Export,
    on_error: &mut dyn FnMut(&str),
) -> Result<(), End> {
    let mut buf = Vec::new();
    loop {
        let mut header = [0u8; REQUEST_LEN];
        r.read_exact(&mut header)?;
        let Some(req) = parse_request(&header) else {
            return Err(End::Done);
        };
        match req.action(export.size()) {
            Action::Read { offset, len } => {
                buf.resize(len as usize, 0);
                match export.read(offset, &mut buf) {
                    Ok(()) => simple_reply(w, 0, req.handle, &buf)?,
                    Err(e) => {
                        on_error(&format!("read of {len} bytes at {offset} failed: {e}"));
                        simple_reply(w, EIO, req.handle, &[])?;
                    }
                }
            }
            Action::Refuse(code) => simple_reply(w, code, req.handle, &[])?,
            Action::SkipWrite(len) => {
                // The payload follows the request: skip it.
                io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
                simple_reply(w, EPERM, req.handle, &[])?;
            }
            Action::Ack => simple_reply(w, 0, req.handle, &[])?,
            Action::End => return Err(End::Done),
        }
    }
}

/// A whole connection: the handshake, then transmission.
pub fn serve(
    r: &mut impl Read,
    w: &mut impl Write,
    export: &dyn Export,
    on_error: &mut dyn FnMut(&str),
) -> Result<(), End> {
    handshake(r, w, export)?;
    transmission(r, w, export, on_error)
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
            let _ = session(&input);
        }
    }
}
