//! Lays out the release `strait` binary's functions in the order of
//! `symbol-order.txt` (written by `deploy/symbol-order.sh`): the code that
//! runs at start-up and per request sits together, so an idle proxy keeps a
//! few megabytes of its text resident instead of most of it. Only for
//! release builds on Linux, where rustc links with lld; set
//! `STRAIT_SYMBOL_ORDER=0` to link without it (e.g. with another linker).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=STRAIT_SYMBOL_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let wanted = std::env::var("STRAIT_SYMBOL_ORDER").map_or(true, |v| v != "0");
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    if release && linux && wanted && order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=strait=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            order.display()
        );
    }
}
