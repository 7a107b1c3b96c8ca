//! Builds the in-sandbox agent as a static binary for the build scripts of
//! the crates that need it (the daemon embeds it; the conformance tests run
//! it), with one command and one target dir (`target/agent`), so the work is
//! shared. The agent gets its own target dir so this nested build never
//! contends with the outer one's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the static agent (release, crt-static, in `target/agent`) and
/// returns its path; prints the `rerun-if-changed` lines of the calling
/// build script. Call it from a build script only.
pub fn build() -> PathBuf {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest
        .parent()
        .and_then(Path::parent)
        .expect("workspace root")
        .to_path_buf();
    for p in [
        "crates/sandkasten-agent/src",
        "crates/sandkasten-agent/Cargo.toml",
        "crates/sandkasten-protocol/src",
        "crates/sandkasten-fsops/src",
        "crates/sandkasten-fsops/Cargo.toml",
        "crates/sandkasten-protocol/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let target = std::env::var("TARGET").unwrap();
    let target_dir = root.join("target").join("agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "sandkasten-agent",
            "--bin",
            "sandkasten-agent",
            "--target",
            &target,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .status()
        .expect("running cargo to build sandkasten-agent");
    assert!(
        status.success(),
        "building the static sandkasten-agent failed"
    );
    target_dir
        .join(&target)
        .join("release")
        .join("sandkasten-agent")
}
