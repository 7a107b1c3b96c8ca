//! Builds the in-sandbox agent as a static binary, exactly as the daemon's
//! build script does (same command, same target dir `target/agent`, so the
//! two share the work), and hands its path to the harness as
//! `SANDKASTEN_AGENT_BIN`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
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
    let bin = target_dir
        .join(&target)
        .join("release")
        .join("sandkasten-agent");
    println!("cargo:rustc-env=SANDKASTEN_AGENT_BIN={}", bin.display());
}
