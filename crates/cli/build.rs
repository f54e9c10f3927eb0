//! Embeds an rpath to the libtorch that torch-sys linked, so binaries and tests run without
//! LD_LIBRARY_PATH; and the git commit the binary is built from, so that reports name the code
//! that made them (not whatever the checkout holds when a long run ends).

use std::path::Path;
use std::process::Command;

fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // rerun when the commit, the index or any source changes, so the commit and its -dirty mark
    // are those of the sources compiled
    for p in [
        ".git/HEAD",
        ".git/index",
        "crates",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", repo.join(p).display());
    }
    // a commit moves the branch HEAD names (a loose ref, or packed-refs), not HEAD itself
    if let Some(branch) = std::fs::read_to_string(repo.join(".git/HEAD"))
        .ok()
        .and_then(|h| {
            h.strip_prefix("ref: ")
                .map(|r| repo.join(".git").join(r.trim()))
        })
    {
        let watched = if branch.exists() {
            branch
        } else {
            repo.join(".git/packed-refs")
        };
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"]).map(|c| {
        let dirty = git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "crates",
        ])
        .is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{c}-dirty")
        } else {
            c
        }
    });
    println!(
        "cargo:rustc-env=DPSYNTH_BUILD_COMMIT={}",
        commit.unwrap_or_default()
    );
}
