//! The admin socket target: bytes a client sends the engine's admin
//! socket (`serve::admin::proto::read_request`, as the server reads one
//! request from a connection) and bytes a client reads back
//! (`decode_reply`, as `scoutfs counters` reads a reply). Neither may
//! panic or read past its bound, and what decodes must encode back to
//! itself.

use scoutfs_engine::serve::admin::proto::{
    decode_reply, encode_reply, read_request, AdminRequest, MAX_REQUEST_BYTES,
};

pub fn admin(data: &[u8]) {
    // A connection's bytes: one request line at most.
    let mut conn = data;
    if let Ok(req) = read_request(&mut conn) {
        let consumed = data.len() - conn.len();
        assert!(consumed <= MAX_REQUEST_BYTES, "read {consumed} bytes");
        assert_eq!(read_request(&mut &req.encode()[..]), Ok(req));
    }
    // The same bytes as a reply.
    if let Ok(reply) = decode_reply(data) {
        assert_eq!(decode_reply(&encode_reply(&reply)), Ok(reply));
    }
}

/// Seeds: each request as a client sends it, an ok reply with counter
/// lines, an empty ok and an error reply, as the engine writes them.
pub fn seed_inputs() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = AdminRequest::ALL.iter().map(|r| r.encode()).collect();
    let lines = ["fuse_lookup 3", "commits 2", "op_lookup_p99_us 80"];
    seeds.push(encode_reply(&Ok(lines
        .iter()
        .map(|l| l.to_string())
        .collect())));
    seeds.push(encode_reply(&Ok(Vec::new())));
    seeds.push(encode_reply(&Err((
        libc::EPERM,
        "sync: Operation not permitted (errno 1)".to_string(),
    ))));
    seeds
}
