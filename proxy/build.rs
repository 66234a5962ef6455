//! Lays out the release `strait` binary's functions in the order of
//! `symbol-order.txt` (written by `deploy/symbol-order.sh`): the code that
//! runs at start-up and per request sits together, so an idle proxy keeps a
//! few megabytes of its text resident instead of most of it. Only where
//! the linker is known to be lld: release builds for x86_64 Linux (GNU)
//! with rustc 1.90 or later (which links that target with its bundled
//! lld) and no linker chosen in RUSTFLAGS. `STRAIT_SYMBOL_ORDER=0` turns
//! it off.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=STRAIT_SYMBOL_ORDER");
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    let wanted = std::env::var("STRAIT_SYMBOL_ORDER").map_or(true, |v| v != "0");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if wanted && release && order.exists() && links_with_lld() {
        println!(
            "cargo:rustc-link-arg-bin=strait=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            order.display()
        );
    }
}

fn links_with_lld() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    let rustflags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || rustflags.contains("linker") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
