//! Write seed inputs for every fuzz target (or the targets named after
//! DIR), taken from a freshly made and used volume, into
//! `DIR/<target>/seed-<n>` (default `fuzz/corpus`).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let only: Vec<String> = std::env::args().skip(2).collect();
    let mut total = 0;
    for (target, inputs) in scoutfs_fuzz_targets::seeds::make_seeds() {
        if !only.is_empty() && !only.iter().any(|t| t == target) {
            continue;
        }
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        for (n, input) in inputs.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{n:03}")), input)?;
            total += 1;
        }
    }
    println!("{total} seeds written under {}", dir.display());
    Ok(())
}
