//! Helpers for the integration tests in `tests/tests/`: where the built binary and plugin
//! libraries are, and how to run `latent`.
//!
//! The plugins are cdylibs, which `cargo test` does not build: the README's test command runs
//! `cargo build --workspace` first. [`plugin_dir`] fails with that advice when they are missing.

use std::path::PathBuf;
use std::process::{Command, Output};

/// `target/<profile>`, where `cargo build` puts the `latent` binary and the plugin libraries.
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent().and_then(|p| p.parent()).expect("target dir").to_path_buf()
}

/// The directory holding the built plugin libraries; panics with advice when they are absent.
pub fn plugin_dir() -> PathBuf {
    let dir = build_dir();
    let lib = dir.join(format!(
        "{}latent_plugin_simclr.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ));
    assert!(
        lib.exists(),
        "plugin libraries not found in {} (looked for {}): run `cargo build --workspace` before `cargo test`",
        dir.display(),
        lib.display()
    );
    dir
}

/// The `latent` binary.
pub fn latent_bin() -> PathBuf {
    let p = build_dir().join(format!("latent{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace` before `cargo test`",
        p.display()
    );
    p
}

/// Runs `latent` with `args`, plugins from the build directory only.
pub fn latent(args: &[&str]) -> Output {
    Command::new(latent_bin())
        .args(args)
        .env_remove("LATENT_PLUGIN_PATH")
        .env("NO_COLOR", "1")
        .output()
        .expect("run latent")
}

/// Stdout and stderr of an output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
