//! The FUSE request target: arbitrary request bytes through the path that
//! /dev/fuse requests take — a `Reader` over the request buffer and a
//! `FuseDevWriter` for the reply, into `ScoutServer::handle_message`
//! (fuse-backend-rs's decoder behind our FUSE_TMPFILE interception), into
//! `ScoutFuse` over a real engine on mem devices.
//!
//! One engine serves every input of a process (starting one costs a
//! reactor thread and a mkfs), so inputs see what earlier ones left: the
//! decoder is what is under test, and a reply is written to /dev/null.
//! The session is set up by a valid FUSE_INIT first, as the kernel does.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

use fuse_backend_rs::abi::fuse_abi::{
    InHeader, InitIn, Opcode, KERNEL_MINOR_VERSION, KERNEL_VERSION,
};
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader};
use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::reactor::{CorePin, ReactorConfig};
use scoutfs_engine::serve::{Engine, EngineOptions};
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::TxnOptions;
use scoutfs_fuse::{Counters, FuseOptions, ScoutFuse, ScoutServer};

use crate::input::Input;

/// Most requests one input sends.
const MAX_REQUESTS: usize = 16;
/// The largest request buffer, as a session's (1 MiB of data plus the
/// header page).
const MAX_REQUEST_BYTES: usize = (1 << 20) + 4096;
/// Reply buffer, as the session's.
const REPLY_BYTES: usize = (1 << 20) + 4096;

struct Session {
    server: ScoutServer,
    null: File,
    /// The mount's counters: the tests check that requests get through.
    #[cfg_attr(not(test), allow(dead_code))]
    counters: Arc<Counters>,
}

fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let hdr = InHeader {
        len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: std::process::id(),
        padding: 0,
    };
    let mut v = vm_memory::ByteValued::as_slice(&hdr).to_vec();
    v.extend_from_slice(body);
    v
}

/// A FUSE_INIT as Linux 6.1 sends it.
pub fn init_request() -> Vec<u8> {
    let init = InitIn {
        major: KERNEL_VERSION,
        minor: KERNEL_MINOR_VERSION,
        max_readahead: 128 << 10,
        flags: u32::MAX,
    };
    request(
        Opcode::Init as u32,
        1,
        0,
        vm_memory::ByteValued::as_slice(&init),
    )
}

fn session() -> &'static Session {
    static SESSION: OnceLock<Session> = OnceLock::new();
    SESSION.get_or_init(|| {
        let meta = MemDev::new(64 << 20);
        let data = MemDev::new(64 << 20);
        mkfs(&meta, &data, &MkfsOptions::default()).expect("mkfs on mem devices");
        let opts = EngineOptions {
            reactor: ReactorConfig {
                pin: CorePin::None,
                ..ReactorConfig::default()
            },
            txn: TxnOptions {
                cache_bytes: 16 << 20,
                ..TxnOptions::default()
            },
            ..EngineOptions::default()
        };
        let meta: Arc<dyn BlockDev> = Arc::new(meta);
        let data: Arc<dyn BlockDev> = Arc::new(data);
        let engine = Arc::new(Engine::start(meta, data, opts).expect("engine on mem devices"));
        let counters = Arc::new(Counters::default());
        let fs = ScoutFuse::new(engine, FuseOptions::default(), counters.clone());
        let s = Session {
            counters,
            server: ScoutServer::new(fs),
            null: File::options()
                .write(true)
                .open("/dev/null")
                .expect("/dev/null"),
        };
        handle(&s, &mut init_request());
        s
    })
}

/// One request through the /dev/fuse path.
fn handle(s: &Session, req: &mut [u8]) {
    handle_to(s, req, s.null.as_raw_fd());
}

/// One request, its reply written to `reply_fd` as to /dev/fuse.
fn handle_to(s: &Session, req: &mut [u8], reply_fd: std::os::fd::RawFd) {
    let mut reply = vec![0u8; REPLY_BYTES];
    let Ok(reader) = Reader::<()>::from_fuse_buffer(FuseBuf::new(req)) else {
        return;
    };
    let Ok(writer) = FuseDevWriter::<()>::new(reply_fd, &mut reply) else {
        return;
    };
    // Errors are the decoder refusing the request: what we want.
    let _ = s.server.handle_message(reader, writer.into(), None, None);
}

/// FUSE requests: a sequence of length-prefixed request buffers, each
/// handled as one read from /dev/fuse.
pub fn fuse_request(data: &[u8]) {
    let s = session();
    let mut inp = Input::new(data);
    for _ in 0..MAX_REQUESTS {
        if inp.is_empty() {
            break;
        }
        let chunk = inp.chunk();
        let mut req = chunk[..chunk.len().min(MAX_REQUEST_BYTES)].to_vec();
        handle(s, &mut req);
    }
}

/// Seed requests: INIT, then an ordinary session's worth (lookup, mkdir,
/// create, write, read, readdir, setxattr, getxattr, rename, unlink).
pub fn seed_requests() -> Vec<Vec<u8>> {
    use fuse_backend_rs::abi::fuse_abi::{
        CreateIn, GetattrIn, GetxattrIn, MkdirIn, OpenIn, ReadIn, Rename2In, SetxattrIn, WriteIn,
    };
    use vm_memory::ByteValued;
    fn body<T: ByteValued>(t: &T, tail: &[u8]) -> Vec<u8> {
        let mut v = t.as_slice().to_vec();
        v.extend_from_slice(tail);
        v
    }
    let mut seqs = Vec::new();
    let mut one = |reqs: Vec<Vec<u8>>| {
        let mut out = Vec::new();
        for r in reqs {
            crate::input::put_chunk(&mut out, &r);
        }
        seqs.push(out);
    };
    let op = |o: Opcode| o as u32;
    one(vec![init_request()]);
    one(vec![request(op(Opcode::Lookup), 2, 1, b"missing\0")]);
    one(vec![request(
        op(Opcode::Getattr),
        3,
        1,
        GetattrIn::default().as_slice(),
    )]);
    one(vec![
        request(
            op(Opcode::Mkdir),
            4,
            1,
            &body(
                &MkdirIn {
                    mode: 0o755,
                    umask: 0o022,
                },
                b"dir\0",
            ),
        ),
        request(
            op(Opcode::Create),
            5,
            1,
            &body(
                &CreateIn {
                    flags: libc::O_RDWR as u32,
                    mode: 0o644,
                    umask: 0o022,
                    fuse_flags: 0,
                },
                b"file\0",
            ),
        ),
        request(op(Opcode::Lookup), 6, 1, b"file\0"),
        request(
            op(Opcode::Open),
            7,
            1,
            OpenIn {
                flags: libc::O_RDONLY as u32,
                fuse_flags: 0,
            }
            .as_slice(),
        ),
        request(op(Opcode::Opendir), 8, 1, OpenIn::default().as_slice()),
        request(
            op(Opcode::Readdirplus),
            9,
            1,
            ReadIn {
                size: 4096,
                ..ReadIn::default()
            }
            .as_slice(),
        ),
    ]);
    one(vec![request(
        op(Opcode::Write),
        10,
        2,
        &body(
            &WriteIn {
                size: 5,
                ..WriteIn::default()
            },
            b"hello",
        ),
    )]);
    one(vec![request(
        op(Opcode::Read),
        11,
        2,
        ReadIn {
            size: 4096,
            ..ReadIn::default()
        }
        .as_slice(),
    )]);
    one(vec![
        request(
            op(Opcode::Setxattr),
            12,
            1,
            &body(&SetxattrIn { size: 3, flags: 0 }, b"user.a\0abc"),
        ),
        request(
            op(Opcode::Getxattr),
            13,
            1,
            &body(
                &GetxattrIn {
                    size: 64,
                    padding: 0,
                },
                b"user.a\0",
            ),
        ),
        request(
            op(Opcode::Listxattr),
            14,
            1,
            GetxattrIn {
                size: 64,
                padding: 0,
            }
            .as_slice(),
        ),
    ]);
    one(vec![request(
        op(Opcode::Rename2),
        15,
        1,
        &body(
            &Rename2In {
                newdir: 1,
                flags: 0,
                padding: 0,
            },
            b"file\0moved\0",
        ),
    )]);
    one(vec![
        request(op(Opcode::Unlink), 16, 1, b"moved\0"),
        request(op(Opcode::Rmdir), 17, 1, b"dir\0"),
        request(op(Opcode::Statfs), 18, 1, &[]),
        request(
            scoutfs_fuse::FUSE_TMPFILE,
            19,
            1,
            &body(&CreateIn::default(), b"/\0"),
        ),
    ]);
    seqs
}

#[cfg(test)]
mod tests {
    use super::*;
    use scoutfs_fuse::Counter;

    #[test]
    fn seed_requests_reach_the_filesystem() {
        for seq in seed_requests() {
            fuse_request(&seq);
        }
        let c = &session().counters;
        for op in [
            Counter::Create,
            Counter::Write,
            Counter::Readdir,
            Counter::Xattr,
            Counter::Rename,
        ] {
            assert!(c.get(op) > 0, "{} never reached ScoutFuse", op.name());
        }
    }

    /// The reply's error (negative errno, 0 for success) to one request.
    fn reply_error(req: &mut [u8]) -> i32 {
        use std::io::Read;
        let s = session();
        let mut path = std::env::temp_dir();
        path.push(format!("scoutfs-fuse-reply-{}", std::process::id()));
        let mut out = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("reply file");
        let _ = std::fs::remove_file(&path);
        handle_to(s, req, out.as_raw_fd());
        let mut hdr = [0u8; 16];
        std::io::Seek::rewind(&mut out).expect("rewind");
        out.read_exact(&mut hdr).expect("a reply header");
        i32::from_le_bytes(hdr[4..8].try_into().expect("4 bytes"))
    }

    /// A READ or WRITE claiming more than a request buffer holds is
    /// refused before anything is allocated for it (the header's size
    /// field once had the handler allocate up to 4 GiB).
    #[test]
    fn oversized_read_and_write_are_einval() {
        use fuse_backend_rs::abi::fuse_abi::{ReadIn, WriteIn};
        use vm_memory::ByteValued;
        for size in [u32::MAX, (1 << 20) + 1] {
            let read = ReadIn {
                fh: 0,
                offset: 0,
                size,
                ..Default::default()
            };
            let mut req = request(Opcode::Read as u32, 90, 1, read.as_slice());
            assert_eq!(reply_error(&mut req), -libc::EINVAL, "READ of {size}");
            let write = WriteIn {
                fh: 0,
                offset: 0,
                size,
                ..Default::default()
            };
            let mut body = write.as_slice().to_vec();
            body.extend_from_slice(&[7u8; 64]);
            let mut req = request(Opcode::Write as u32, 91, 1, &body);
            assert_eq!(reply_error(&mut req), -libc::EINVAL, "WRITE of {size}");
        }
    }
}
