//! With feature `spdk`: link the benchmark binary against SPDK the way
//! scoutfs-engine's build script found it (its link arguments reach only
//! its own targets, so binaries elsewhere repeat them).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_SPDK_LINK_ARGS");
    if std::env::var_os("CARGO_FEATURE_SPDK").is_none() {
        return;
    }
    if let Ok(args) = std::env::var("DEP_SPDK_LINK_ARGS") {
        for a in args.split('\t').filter(|a| !a.is_empty()) {
            println!("cargo:rustc-link-arg-bins={a}");
        }
    }
}
