//! With feature `spdk`: the SPDK bindings. When pkg-config finds SPDK
//! (spdk_nvme, spdk_env_dpdk; PKG_CONFIG_PATH, or /opt/spdk), bindgen
//! regenerates them from SPDK's headers through vendor-bindings/ and the
//! crate links against SPDK; otherwise the checked-in copy
//! (vendor-bindings/spdk_bindings.rs) is used, so `cargo check --features
//! spdk` works anywhere and only linking needs SPDK.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Set when the spdk backend is linked against a real SPDK.
    println!("cargo:rustc-check-cfg=cfg(spdk_linked)");
    #[cfg(feature = "spdk")]
    spdk::bindings();
}

#[cfg(feature = "spdk")]
mod spdk {
    use std::path::{Path, PathBuf};

    const FALLBACK_PKG_CONFIG_PATH: &str = "/opt/spdk/lib/pkgconfig";

    fn probe(name: &str) -> Option<pkg_config::Library> {
        pkg_config::Config::new()
            .cargo_metadata(false)
            .probe(name)
            .ok()
    }

    pub fn bindings() {
        let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
        let vendor = manifest.join("../vendor-bindings");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
        let checked_in = vendor.join("spdk_bindings.rs");
        for f in ["spdk_wrapper.h", "allowlist.txt", "spdk_bindings.rs"] {
            println!("cargo:rerun-if-changed={}", vendor.join(f).display());
        }
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        println!("cargo:rerun-if-env-changed=SCOUTFS_SPDK_NO_REGEN");

        if std::env::var_os("PKG_CONFIG_PATH").is_none()
            && Path::new(FALLBACK_PKG_CONFIG_PATH).exists()
        {
            // SAFETY (of the environment): build scripts run single-threaded.
            std::env::set_var("PKG_CONFIG_PATH", FALLBACK_PKG_CONFIG_PATH);
        }
        let (Some(nvme), Some(env)) = (probe("spdk_nvme"), probe("spdk_env_dpdk")) else {
            println!(
                "cargo:warning=SPDK not found by pkg-config: using the checked-in bindings; \
                 linking the spdk backend needs SPDK (set PKG_CONFIG_PATH)"
            );
            std::fs::copy(&checked_in, out.join("spdk_bindings.rs"))
                .expect("vendor-bindings/spdk_bindings.rs is checked in");
            return;
        };
        println!("cargo:rustc-cfg=spdk_linked");
        let regen = std::env::var_os("SCOUTFS_SPDK_NO_REGEN").is_none();
        if regen {
            generate(&vendor, &nvme, &env, &out.join("spdk_bindings.rs"));
        } else {
            std::fs::copy(&checked_in, out.join("spdk_bindings.rs"))
                .expect("vendor-bindings/spdk_bindings.rs is checked in");
        }
        // Link every SPDK and DPDK library pkg-config names, ISA-L (which
        // libspdk_util needs but its .pc file does not list) and the system
        // libraries spdk_syslibs lists as private, all with --no-as-needed:
        // SPDK's shared libraries don't record most of these as needed
        // (libspdk_env_dpdk names no DPDK library at all), and DPDK's
        // drivers register themselves from constructors, so nothing we call
        // refers to them. `rustc-link-arg` reaches this crate's tests and
        // binaries only; a dependent binary repeats these lines (see
        // vendor-bindings/README.md).
        let mut args = vec!["-Wl,--no-as-needed".to_string()];
        let mut seen = std::collections::HashSet::new();
        for lib in [&nvme, &env] {
            for p in &lib.link_paths {
                if seen.insert(format!("-L{}", p.display())) {
                    println!("cargo:rustc-link-search=native={}", p.display());
                    args.push(format!("-L{}", p.display()));
                }
            }
            for l in &lib.libs {
                if seen.insert(format!("-l{l}")) {
                    args.push(format!("-l{l}"));
                }
            }
        }
        args.push("-lisal".into());
        args.push("-lisal_crypto".into());
        let sys = pkg_config::Config::new()
            .cargo_metadata(false)
            .statik(true)
            .probe("spdk_syslibs");
        for l in sys.map(|s| s.libs).unwrap_or_default() {
            if !l.starts_with("isal") && seen.insert(format!("-l{l}")) {
                if let Some(a) = system_lib_arg(&l) {
                    args.push(a);
                }
            }
        }
        args.push("-Wl,--as-needed".into());
        for a in &args {
            println!("cargo:rustc-link-arg={a}");
        }
        // For the build scripts of crates whose binaries use the backend:
        // DEP_SPDK_LINK_ARGS, tab separated.
        println!("cargo:link_args={}", args.join("\t"));
    }

    /// `-lNAME` when the development symlink exists, else the versioned
    /// runtime library by file name (`-l:libNAME.so.N`: Debian's runtime
    /// packages, which SPDK's install pulls in, have no `libNAME.so`).
    fn system_lib_arg(name: &str) -> Option<String> {
        let dirs = [
            "/usr/lib/x86_64-linux-gnu",
            "/lib/x86_64-linux-gnu",
            "/usr/lib",
            "/lib",
        ];
        let plain = format!("lib{name}.so");
        if dirs.iter().any(|d| Path::new(d).join(&plain).exists()) {
            return Some(format!("-l{name}"));
        }
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            let mut found: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with(&format!("{plain}.")))
                .collect();
            found.sort_by_key(|f| f.len());
            if let Some(f) = found.first() {
                return Some(format!("-l:{f}"));
            }
        }
        println!("cargo:warning=SPDK needs lib{name}, which is not installed");
        None
    }

    fn generate(vendor: &Path, nvme: &pkg_config::Library, env: &pkg_config::Library, out: &Path) {
        let allow = std::fs::read_to_string(vendor.join("allowlist.txt"))
            .expect("vendor-bindings/allowlist.txt");
        let mut b = bindgen::Builder::default()
            .header(vendor.join("spdk_wrapper.h").display().to_string())
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false)
            .prepend_enum_name(false);
        for inc in nvme.include_paths.iter().chain(&env.include_paths) {
            b = b.clang_arg(format!("-I{}", inc.display()));
        }
        for re in allow
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            b = b
                .allowlist_function(re)
                .allowlist_type(re)
                .allowlist_var(re);
        }
        let bindings = b
            .generate()
            .expect("bindgen over vendor-bindings/spdk_wrapper.h");
        bindings
            .write_to_file(out)
            .expect("writing the SPDK bindings");
    }
}
