//! Builds the in-sandbox agent as a static binary (shared with the
//! daemon's build) and hands its path to the harness as
//! `SANDKASTEN_AGENT_BIN`.

fn main() {
    let bin = sandkasten_agent_build::build();
    println!("cargo:rustc-env=SANDKASTEN_AGENT_BIN={}", bin.display());
}
