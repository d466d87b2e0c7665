//! The admin socket's protocol: one request per connection, one reply,
//! then the engine closes. Plain text, so `socat - UNIX-CONNECT:SOCK`
//! works as a client too.
//!
//! Request: one line, at most [`MAX_REQUEST_BYTES`] bytes with its `\n`:
//! a command word (`counters`, `sync`, `reset-counters`). Anything else
//! (an unknown word, arguments, bytes that aren't ASCII, no newline
//! before the limit or the end) is refused with EINVAL.
//!
//! Reply: a status line, then the body, then the end of the stream:
//! - `ok\n`, then one `name value\n` line per counter (`counters`; the
//!   format `scoutfs counters` has always printed), or the reply's lines;
//! - `error ERRNO MESSAGE\n` with a positive Linux errno (EPERM: the
//!   command is root's; EINVAL: not a request) and no body.
//!
//! A reply is at most [`MAX_REPLY_BYTES`]; a client refuses a longer one.

use std::io::Read;

/// Longest request line, `\n` included.
pub const MAX_REQUEST_BYTES: usize = 256;

/// Longest reply a client reads (16 MiB): far above the few hundred
/// counter lines a mount has.
pub const MAX_REPLY_BYTES: usize = 16 << 20;

/// What a client asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// Every counter: the frontends', the volume's, and per op kind the
    /// count, errors and latency percentiles (open to every user).
    Counters,
    /// Commit the open transaction now; replies `committed_seq N` (root).
    Sync,
    /// Start the per-op counts and latencies again (root).
    ResetCounters,
}

impl AdminRequest {
    pub const ALL: [AdminRequest; 3] = [
        AdminRequest::Counters,
        AdminRequest::Sync,
        AdminRequest::ResetCounters,
    ];

    /// The command word.
    pub fn word(self) -> &'static str {
        match self {
            AdminRequest::Counters => "counters",
            AdminRequest::Sync => "sync",
            AdminRequest::ResetCounters => "reset-counters",
        }
    }

    /// The request as sent: its word and `\n`.
    pub fn encode(self) -> Vec<u8> {
        format!("{}\n", self.word()).into_bytes()
    }

    /// The request in `line` (without its `\n`; a `\r` before it is
    /// taken as a terminal's line end).
    pub fn decode(line: &[u8]) -> Result<AdminRequest, ProtoError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() >= MAX_REQUEST_BYTES {
            return Err(ProtoError::TooLong);
        }
        let word = std::str::from_utf8(line)
            .map_err(|_| ProtoError::NotText)?
            .trim();
        AdminRequest::ALL
            .into_iter()
            .find(|r| r.word() == word)
            .ok_or_else(|| ProtoError::Unknown(word.chars().take(64).collect()))
    }
}

/// Why bytes are not a request or a reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("no request line within {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    #[error("the connection ended before a request line")]
    Truncated,
    #[error("the request is not text")]
    NotText,
    #[error("unknown request {0:?} (counters, sync, reset-counters)")]
    Unknown(String),
    #[error("malformed reply: {0}")]
    BadReply(String),
    #[error("reading the request: {0}")]
    Io(String),
}

/// Read one request line from `r` (a connection), at most
/// [`MAX_REQUEST_BYTES`], and decode it. Reads byte by byte up to the
/// `\n`, so nothing after it is consumed.
pub fn read_request(r: &mut impl Read) -> Result<AdminRequest, ProtoError> {
    let mut line = Vec::with_capacity(32);
    let mut byte = [0u8; 1];
    while line.len() < MAX_REQUEST_BYTES {
        match r.read(&mut byte) {
            Ok(0) => return Err(ProtoError::Truncated),
            Ok(_) if byte[0] == b'\n' => return AdminRequest::decode(&line),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtoError::Io(e.to_string())),
        }
    }
    Err(ProtoError::TooLong)
}

/// A reply's bytes: `ok` and `lines`, or the error's status line. Line
/// breaks in a message are sent as spaces.
pub fn encode_reply(reply: &Result<Vec<String>, (i32, String)>) -> Vec<u8> {
    let mut out = String::new();
    match reply {
        Ok(lines) => {
            out.push_str("ok\n");
            for l in lines {
                out.push_str(&l.replace('\n', " "));
                out.push('\n');
            }
        }
        Err((errno, msg)) => {
            out.push_str(&format!("error {errno} {}\n", msg.replace('\n', " ")));
        }
    }
    out.into_bytes()
}

/// A reply as the client reads it: the body's lines, or the engine's
/// refusal (errno, message), or why the bytes aren't a reply.
pub fn decode_reply(bytes: &[u8]) -> Result<Result<Vec<String>, (i32, String)>, ProtoError> {
    if bytes.len() > MAX_REPLY_BYTES {
        return Err(ProtoError::BadReply(format!(
            "{} bytes, more than {MAX_REPLY_BYTES}",
            bytes.len()
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ProtoError::BadReply("not UTF-8".into()))?;
    let (status, body) = text
        .split_once('\n')
        .ok_or_else(|| ProtoError::BadReply("no status line".into()))?;
    if status == "ok" {
        return Ok(Ok(body.lines().map(str::to_string).collect()));
    }
    let bad = || ProtoError::BadReply(format!("status {:?}", truncate(status)));
    let rest = status.strip_prefix("error ").ok_or_else(bad)?;
    let (errno, msg) = rest.split_once(' ').unwrap_or((rest, ""));
    let errno: i32 = errno.parse().map_err(|_| bad())?;
    if errno <= 0 || !body.is_empty() {
        return Err(bad());
    }
    Ok(Err((errno, msg.to_string())))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_reads_back_as_itself() {
        for r in AdminRequest::ALL {
            assert_eq!(read_request(&mut &r.encode()[..]), Ok(r));
        }
        assert_eq!(
            read_request(&mut &b"counters\r\nextra"[..]),
            Ok(AdminRequest::Counters)
        );
    }

    #[test]
    fn what_is_not_a_request_is_refused() {
        let long = vec![b'a'; MAX_REQUEST_BYTES + 10];
        assert_eq!(read_request(&mut &long[..]), Err(ProtoError::TooLong));
        assert_eq!(
            read_request(&mut &b"counters"[..]),
            Err(ProtoError::Truncated)
        );
        assert_eq!(read_request(&mut &b"\xff\n"[..]), Err(ProtoError::NotText));
        assert!(matches!(
            read_request(&mut &b"counters now\n"[..]),
            Err(ProtoError::Unknown(_))
        ));
        assert!(matches!(
            read_request(&mut &b"\n"[..]),
            Err(ProtoError::Unknown(_))
        ));
    }

    #[test]
    fn replies_round_trip() {
        let ok = Ok(vec!["fuse_lookup 3".to_string(), "commits 2".to_string()]);
        assert_eq!(decode_reply(&encode_reply(&ok)), Ok(ok));
        let empty = Ok(Vec::new());
        assert_eq!(decode_reply(&encode_reply(&empty)), Ok(empty));
        let err = Err((libc::EPERM, "sync is root's\nonly".to_string()));
        assert_eq!(
            decode_reply(&encode_reply(&err)),
            Ok(Err((libc::EPERM, "sync is root's only".to_string())))
        );
        for bad in [
            &b""[..],
            b"ok",
            b"fine\n",
            b"error x y\n",
            b"error -1 x\n",
            b"error 1 x\nbody",
        ] {
            assert!(decode_reply(bad).is_err(), "{bad:?}");
        }
    }
}
