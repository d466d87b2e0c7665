//! The volume mounts as other filesystems do: `scoutfs install` puts the
//! binary and the mount(8) helper links in place; `mount -t scoutfs`,
//! `mount -t fuse.scoutfs` and fstab lines (`mount -T FSTAB -a`, twice)
//! mount it through them with the standard options and scoutfs's own;
//! /proc/mounts, findmnt and `df -T` name the volume; `umount DIR` stops
//! the engine, which commits and exits 0; failures are mount(8)'s exit 32
//! with the engine's reason; systemd's fstab generator makes a mount unit
//! of the fstab line.
//!
//! The mounts run in a private mount namespace (unshare -m) with an
//! overlay on /usr/sbin, so `scoutfs install` really installs into /sbin
//! as mount(8) sees it while the machine's /sbin stays as it was, and
//! nothing is left behind when the namespace's last process (the engine)
//! exits. The test process is a child subreaper, so the daemonized
//! engines become its children and their exit status is read with
//! waitpid.
//!
//! Needs root and /dev/fuse for the mounts; without them those tests
//! print why and pass vacuously.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::{sh, Vol};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_scoutfs")
}

/// Run a command; (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn install_puts_the_binary_and_helper_links_under_a_root_and_uninstall_removes_them() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let install = || run(Command::new(bin()).arg("install").arg("--root").arg(r));
    let (code, out, err) = install();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "installed {r}/usr/local/sbin/scoutfs\n\
             linked {r}/sbin/mount.scoutfs -> /usr/local/sbin/scoutfs\n\
             linked {r}/sbin/mount.fuse.scoutfs -> /usr/local/sbin/scoutfs\n",
            r = r.display()
        )
    );
    let installed = r.join("usr/local/sbin/scoutfs");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(bin()).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    for name in ["mount.scoutfs", "mount.fuse.scoutfs"] {
        assert_eq!(
            std::fs::read_link(r.join("sbin").join(name)).unwrap(),
            Path::new("/usr/local/sbin/scoutfs")
        );
    }
    let (code, out, _) = run(Command::new(&installed).arg("version"));
    assert_eq!(code, 0);
    assert!(out.starts_with("scoutfs "), "{out}");
    // Again over itself: the same result.
    assert_eq!(install().0, 0);

    let (code, out, _) = run(Command::new(bin())
        .args(["install", "--uninstall", "--root"])
        .arg(r));
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(!installed.exists());
    assert!(std::fs::symlink_metadata(r.join("sbin/mount.scoutfs")).is_err());

    // Someone else's helper is not replaced.
    std::fs::write(r.join("sbin/mount.scoutfs"), "#!/bin/sh\n").unwrap();
    let (code, _, err) = install();
    assert_eq!(code, 1);
    assert!(err.contains("exists and is not a link"), "{err}");
    assert_eq!(
        std::fs::read_to_string(r.join("sbin/mount.scoutfs")).unwrap(),
        "#!/bin/sh\n"
    );
}

/// The binary run as mount.scoutfs (a link to it in a temp dir), with
/// what mount(8) would pass.
fn helper(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let link = dir.join("mount.scoutfs");
    if !link.exists() {
        std::os::unix::fs::symlink(bin(), &link).unwrap();
    }
    run(Command::new(&link).args(args))
}

#[test]
fn the_helper_refuses_bad_command_lines_with_mount_8_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let (code, _, err) = helper(d.path(), &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("mount.scoutfs: usage: mount.scoutfs SOURCE DIR"),
        "{err}"
    );
    let (code, _, err) = helper(d.path(), &["/m", "/d", "-N", "/proc/1/ns/mnt"]);
    assert_eq!((code, err.contains("not supported")), (1, true), "{err}");
    // No data device named: a mount failure, with the two ways to name it.
    let (code, _, err) = helper(d.path(), &["/m", "/d", "-o", "rw"]);
    assert_eq!(code, 32);
    assert!(
        err.contains("-o data=DATA") && err.contains("metadev_path=META"),
        "{err}"
    );
    let (code, _, _) = helper(d.path(), &["/m", "/d", "-o", "data=/x,metadev_path=/y"]);
    assert_eq!(code, 32);
    // -f (mount -f): nothing is run; -v says what would be.
    let (code, out, err) = helper(
        d.path(),
        &[
            "/m",
            "/d",
            "-f",
            "-v",
            "-o",
            "rw,data=/x,noauto,nofail,log=/tmp/l",
        ],
    );
    assert_eq!((code, out.as_str()), (0, ""));
    assert!(
        err.contains(
            r#""mount" "/m" "/x" "--fuse" "/d" "--source" "/m" "-o" "rw", logging to /tmp/l"#
        ),
        "{err}"
    );
}

fn mount_unsupported() -> Option<String> {
    if let Some(why) = common::unsupported() {
        return Some(why);
    }
    for tool in ["unshare", "nsenter", "findmnt"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(format!("{tool} is missing (util-linux)"));
        }
    }
    None
}

/// Make this process the reaper of its orphaned descendants, so that
/// an engine the helper left running is our child once the helper exits.
fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag of this
    // process.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0);
}

/// The engine pid a helper wrote to its log.
fn engine_pid(log: &Path) -> i32 {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .rev()
        .find_map(|l| l.split_once(": engine pid ").map(|(_, pid)| pid))
        .unwrap_or_else(|| panic!("no engine pid in {}:\n{text}", log.display()))
        .parse()
        .unwrap()
}

/// An engine running in a private mount namespace: run commands in that
/// namespace; on drop, unmount (lazily) there, so it stops.
struct Engine {
    pid: i32,
    dir: String,
    waited: bool,
}

impl Engine {
    fn ns(&self, script: &str) -> String {
        sh(&format!(
            "nsenter -t {} -m -- bash -c {}",
            self.pid,
            shell_quote(&format!("set -euo pipefail\n{script}"))
        ))
    }

    /// `umount DIR` in its namespace; then its exit status (waitpid: it
    /// is our child, we are its subreaper).
    fn umount(mut self) -> i32 {
        self.ns(&format!("umount {}", self.dir));
        self.waited = true;
        wait_exit(self.pid)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.waited {
            let _ = Command::new("nsenter")
                .args(["-t", &self.pid.to_string(), "-m", "umount", "-l", &self.dir])
                .status();
            // SAFETY: kill(2) and waitpid(2) on our own (adopted) child.
            unsafe {
                libc::kill(self.pid, libc::SIGTERM);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn wait_exit(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on a child of this process (adopted as subreaper).
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status),
        "engine {pid} ended with {status:#x}"
    );
    libc::WEXITSTATUS(status)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// In a new private mount namespace with /usr/sbin overlaid (upper and
/// work dirs under `tmp`): `scoutfs install --sbindir /usr/sbin`, then
/// `script`. Returns the script's output. If the script fails, `mounts`
/// are detached first, so their engines stop rather than serve on in a
/// namespace nothing else can reach.
fn in_new_namespace(tmp: &Path, mounts: &[&str], script: &str) -> String {
    let t = tmp.display();
    sh(&format!(
        "mkdir -p {t}/sbin-upper {t}/sbin-work
         unshare -m --propagation private -- bash -c {}",
        shell_quote(&format!(
            "set -euo pipefail
             trap 'umount -l {mounts} 2>/dev/null' EXIT
             mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir={t}/sbin-upper,workdir={t}/sbin-work /usr/sbin
             {bin} install --sbindir /usr/sbin >/dev/null
             {script}
             trap - EXIT",
            bin = bin(),
            mounts = mounts.join(" "),
        ))
    ))
}

#[test]
fn mount_t_scoutfs_mounts_through_the_installed_helper_and_umount_commits() {
    require_fuse!();
    if let Some(why) = mount_unsupported() {
        eprintln!("skipping: {why}");
        return;
    }
    become_subreaper();
    let v = Vol::new(128 << 20, 64 << 20);
    let (meta, data, dir) = (v.path("meta"), v.path("data"), v.mnt());
    let (meta, data) = (meta.display(), data.display());
    let log = v.path("engine.log");

    // mount returns once the mount is live: at once, findmnt, df -T and
    // /proc/mounts name the volume, and files can be written.
    let out = in_new_namespace(
        v.dir.path(),
        &[&dir],
        &format!(
            "mount -t scoutfs {meta} {dir} -o data={data},ino_alloc_per_lock=4,log={log}
             findmnt -n -r -o SOURCE,FSTYPE,TARGET {dir}
             df -T {dir} | tail -n 1 | awk '{{print $1, $2, $7}}'
             grep ' {dir} ' /proc/mounts | cut -d' ' -f1-3
             echo hello > {dir}/f && cat {dir}/f",
            log = log.display()
        ),
    );
    let e = Engine {
        pid: engine_pid(&log),
        dir: dir.clone(),
        waited: false,
    };
    assert_eq!(
        out,
        format!(
            "{meta} fuse.scoutfs {dir}\n{meta} fuse.scoutfs {dir}\n{meta} {dir} fuse.scoutfs\nhello\n"
        )
    );
    // The engine detached from mount(8): its own session, stdin from
    // /dev/null, its output in the log, its directory /.
    let sid = std::fs::read_to_string(format!("/proc/{}/stat", e.pid)).unwrap();
    let sid: i32 = sid
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sid, e.pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/fd/0", e.pid)).unwrap(),
        Path::new("/dev/null")
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/fd/2", e.pid)).unwrap(),
        log
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", e.pid)).unwrap(),
        Path::new("/")
    );

    // `umount DIR`: the engine commits and exits 0.
    assert_eq!(e.umount(), 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().last().unwrap_or("").starts_with(&format!(
            "scoutfs: unmounted {dir} (umount from outside); committed seq "
        )),
        "{text}"
    );
    v.check();
}

#[test]
fn fstab_lines_mount_with_mount_a_once_and_umount_stops_each_engine() {
    require_fuse!();
    if let Some(why) = mount_unsupported() {
        eprintln!("skipping: {why}");
        return;
    }
    become_subreaper();
    // Two volumes: one named by its metadata device (data=), type
    // scoutfs; one as the kernel's scoutfs names it (the data device,
    // metadev_path=), type fuse.scoutfs, read-only.
    let a = Vol::new(128 << 20, 64 << 20);
    let mut b = Vol::new(128 << 20, 64 << 20);
    // A volume's first mount writes its root directory: b is mounted
    // read-write once before its read-only fstab line.
    b.mount();
    b.unmount();
    let fstab = a.path("fstab");
    let (log_a, log_b) = (a.path("engine.log"), b.path("engine.log"));
    std::fs::write(
        &fstab,
        format!(
            "# scoutfs volumes\n\
             {meta_a} {dir_a} scoutfs defaults,data={data_a},nofail,x-systemd.requires-mounts-for=/tmp,log={log_a} 0 0\n\
             {data_b} {dir_b} fuse.scoutfs metadev_path={meta_b},ro,_netdev,log={log_b} 0 0\n",
            meta_a = a.path("meta").display(),
            data_a = a.path("data").display(),
            dir_a = a.mnt(),
            log_a = log_a.display(),
            meta_b = b.path("meta").display(),
            data_b = b.path("data").display(),
            dir_b = b.mnt(),
            log_b = log_b.display(),
        ),
    )
    .unwrap();
    let (fstab, dir_a, dir_b) = (fstab.display(), a.mnt(), b.mnt());
    let out = in_new_namespace(
        a.dir.path(),
        &[&dir_a, &dir_b],
        &format!(
            "mount -T {fstab} -a
             findmnt -n -r -o SOURCE,FSTYPE,TARGET {dir_a}
             findmnt -n -r -o SOURCE,FSTYPE,TARGET,OPTIONS {dir_b} | cut -d, -f1
             echo a > {dir_a}/f
             touch {dir_b}/f 2>&1 || echo refused
             # Again: both are mounted already, nothing more starts.
             mount -T {fstab} -a -v 2>&1 | sed 's/ *:/:/'",
        ),
    );
    let ea = Engine {
        pid: engine_pid(&log_a),
        dir: dir_a.clone(),
        waited: false,
    };
    let eb = Engine {
        pid: engine_pid(&log_b),
        dir: dir_b.clone(),
        waited: false,
    };
    assert_eq!(
        out,
        format!(
            "{meta_a} fuse.scoutfs {dir_a}\n\
             {data_b} fuse.scoutfs {dir_b} ro\n\
             touch: cannot touch '{dir_b}/f': Read-only file system\n\
             refused\n\
             {dir_a}: already mounted\n\
             {dir_b}: already mounted\n",
            meta_a = a.path("meta").display(),
            data_b = b.path("data").display(),
        )
    );
    // One engine per volume: the second `mount -a` started none.
    assert_ne!(ea.pid, eb.pid);
    for log in [&log_a, &log_b] {
        let text = std::fs::read_to_string(log).unwrap();
        assert_eq!(text.matches(": engine pid ").count(), 1, "{text}");
    }
    assert_eq!(ea.umount(), 0);
    assert_eq!(eb.umount(), 0);
    for log in [&log_a, &log_b] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.contains("(umount from outside); committed seq "),
            "{text}"
        );
    }
    a.check();
    b.check();
}

#[test]
fn a_failed_mount_is_exit_32_with_the_engines_reason_and_leaves_nothing_running() {
    require_fuse!();
    if let Some(why) = mount_unsupported() {
        eprintln!("skipping: {why}");
        return;
    }
    let v = Vol::new(128 << 20, 64 << 20);
    let (meta, data, dir) = (v.path("meta"), v.path("data"), v.mnt());
    let (meta, data) = (meta.display(), data.display());
    let log = v.path("engine.log");
    let log = log.display();
    // Each attempt: "rc=N", then what mount(8) printed, then "--".
    let out = in_new_namespace(
        v.dir.path(),
        &[&dir],
        &format!(
            "try() {{ set +e; \"$@\" 2>&1; echo \"rc=$?\"; set -e; echo --; }}
             try mount -t scoutfs {meta} {dir} -o data={data},bogus_option,log={log}
             try mount -t fuse.scoutfs {meta} {dir} -o data={meta},log={log}
             try mount -t scoutfs {meta} {dir} -o rw
             findmnt {dir} || echo not mounted
             pgrep -f -- '--[f]use {dir}' || echo no engine"
        ),
    );
    let parts: Vec<&str> = out.split("--\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    // An option the engine doesn't know: its own words, then the
    // helper's, exit 32.
    assert_eq!(
        parts[0],
        format!(
            "scoutfs mount: unknown mount option \"bogus_option\" (known: {known})\n\
             mount.scoutfs: mounting {meta} at {dir} failed: the engine exited (exit status: 1); its log: {log}\n\
             rc=32\n",
            known = "ino_alloc_per_lock=N, data_prealloc_blocks=N, data_prealloc_contig_only=0|1, discard, nodiscard, acl, noacl, \
                     ro, rw, suid, nosuid, dev, nodev, exec, noexec, atime, noatime, relatime, norelatime, \
                     strictatime, nostrictatime, diratime, nodiratime, lazytime, nolazytime"
        ),
        "{out}"
    );
    // The metadata device given as the data device too: refused by the
    // engine before anything is written.
    let lines: Vec<&str> = parts[1].lines().collect();
    assert!(lines[0].starts_with("scoutfs mount: "), "{out}");
    assert!(
        lines[lines.len() - 2].starts_with(&format!(
            "mount.fuse.scoutfs: mounting {meta} at {dir} failed: the engine exited (exit status: 1)"
        )),
        "{out}"
    );
    assert_eq!(lines[lines.len() - 1], "rc=32", "{out}");
    // No data device named.
    assert!(
        parts[2].starts_with("mount.scoutfs: which is the data device?"),
        "{out}"
    );
    assert!(parts[2].ends_with("rc=32\n"), "{out}");
    assert_eq!(parts[3], "not mounted\nno engine\n", "{out}");
}

#[test]
fn systemds_fstab_generator_makes_a_mount_unit_of_the_fstab_line() {
    let generator = Path::new("/usr/lib/systemd/system-generators/systemd-fstab-generator");
    if !generator.exists() {
        eprintln!("skipping: no systemd-fstab-generator (systemd)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let t = d.path().display();
    std::fs::write(
        d.path().join("fstab"),
        "/dev/vg/meta /srv/archive scoutfs data=/dev/vg/data,ino_alloc_per_lock=1024 0 0\n",
    )
    .unwrap();
    let unit = sh(&format!(
        "mkdir {t}/n {t}/e {t}/l
         SYSTEMD_FSTAB={t}/fstab SYSTEMD_LOG_LEVEL=err {} {t}/n {t}/e {t}/l
         ls {t}/n/local-fs.target.requires
         grep -v '^#' {t}/n/srv-archive.mount | grep -E '^(What|Where|Type|Options)='",
        generator.display()
    ));
    assert_eq!(
        unit,
        "srv-archive.mount\n\
         What=/dev/vg/meta\n\
         Where=/srv/archive\n\
         Type=scoutfs\n\
         Options=data=/dev/vg/data,ino_alloc_per_lock=1024\n"
    );
}

#[test]
fn the_engine_speaks_sd_notify_on_a_socket_path_as_a_systemd_service() {
    require_fuse!();
    use std::os::unix::net::UnixDatagram;
    let v = Vol::new(128 << 20, 64 << 20);
    let sock_path = v.path("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // A watchdog for a mount that never says anything.
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let log = std::fs::File::create(v.path("engine.log")).unwrap();
    let mut child = v
        .mount_command("mnt", "admin.sock")
        .args(["--core", "none"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(log)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    let src = v.path("meta").canonicalize().unwrap();
    assert_eq!(
        ready,
        format!(
            "READY=1\nSTATUS=serving {} at {}\nMAINPID={}",
            src.display(),
            v.mnt(),
            child.id()
        )
    );
    // Live when it says so.
    assert!(v.mounted());
    std::fs::write(format!("{}/f", v.mnt()), "x").unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        "STOPPING=1\nSTATUS=stopping: received SIGTERM"
    );
    let st = common::wait_timeout(&mut child, std::time::Duration::from_secs(60));
    assert!(st.success(), "{st}: {}", v.log());
    assert!(!v.mounted());
    v.check();
}
