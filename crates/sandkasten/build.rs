//! Builds the in-sandbox agent as a static binary and hands its path to the
//! daemon, which embeds it (`include_bytes!`): Sandkasten ships as one
//! binary.

fn main() {
    let bin = sandkasten_agent_build::build();
    println!("cargo:rustc-env=SANDKASTEN_AGENT_BIN={}", bin.display());
}
