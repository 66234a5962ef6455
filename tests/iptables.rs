//! `strait iptables --apply` and `--clean` against real netfilter, in a
//! network namespace the test creates (nothing on the host is touched),
//! with both backends a node may use: iptables-nft and iptables-legacy.
//! Apply twice must succeed and leave one copy of every rule; clean must
//! leave the nat table exactly as it was before, foreign rules included.
//! That the rules redirect traffic is proven by `tests/netns.rs`.
//!
//! Needs root, `ip netns` and iptables; where `ip netns add` is refused
//! the test says SKIPPED and why.

use std::process::Command;

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Netns, String> {
        let name = format!("strait-ipt-{tag}-{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        Ok(Netns(name))
    }

    fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["netns", "exec", self.0.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

/// The nat table as `iptables-save` prints it, without the comments and
/// packet counters that differ between two dumps of the same rules.
fn nat_table(ns: &Netns, mode: &str) -> String {
    ns.exec(&format!("iptables-{mode}-save"), &["-t", "nat"])
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(table: &str, line: &str) -> usize {
    table.lines().filter(|l| *l == line).count()
}

fn apply_twice_then_clean(mode: &str) {
    let ns = match Netns::new(mode) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("SKIPPED: cannot create a network namespace: {e}");
            return;
        }
    };
    let ipt = format!("iptables-{mode}");
    // A rule somebody else installed: apply and clean must leave it be.
    for chain in ["PREROUTING", "OUTPUT"] {
        ns.exec(
            &ipt,
            &[
                "-t", "nat", "-A", chain, "-p", "udp", "--dport", "53", "-j", "RETURN",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let before = nat_table(&ns, mode);
    let strait = env!("CARGO_BIN_EXE_strait");
    let apply = |extra: &[&str]| {
        let mut args = vec!["iptables", "--apply", "--mode", mode];
        args.extend_from_slice(extra);
        ns.exec(strait, &args)
    };

    apply(&[]).unwrap_or_else(|e| panic!("first apply: {e}"));
    let first = nat_table(&ns, mode);
    // A restarted init container runs it again.
    apply(&[]).unwrap_or_else(|e| panic!("second apply: {e}"));
    let second = nat_table(&ns, mode);
    assert_eq!(first, second, "a second apply changed the rules");
    for line in [
        "-A PREROUTING -p tcp -j STRAIT_INBOUND",
        "-A OUTPUT -p tcp -j STRAIT_OUTBOUND",
        "-A STRAIT_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
        "-A STRAIT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143",
        "-A STRAIT_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
        "-A STRAIT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140",
    ] {
        assert_eq!(
            count(&second, line),
            1,
            "'{line}' not there once:\n{second}"
        );
    }

    // A rerun with other settings refills strait's chains.
    apply(&[
        "--outbound-port",
        "5140",
        "--skip-inbound-ports",
        "4191,9090",
    ])
    .unwrap_or_else(|e| panic!("apply with new ports: {e}"));
    let changed = nat_table(&ns, mode);
    assert_eq!(
        count(
            &changed,
            "-A STRAIT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 5140"
        ),
        1,
        "{changed}"
    );
    assert_eq!(
        count(
            &changed,
            "-A STRAIT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140"
        ),
        0,
        "{changed}"
    );
    assert_eq!(
        count(
            &changed,
            "-A STRAIT_INBOUND -p tcp -m tcp --dport 9090 -j RETURN"
        ),
        1,
        "{changed}"
    );

    ns.exec(strait, &["iptables", "--clean", "--mode", mode])
        .unwrap_or_else(|e| panic!("clean: {e}"));
    assert_eq!(nat_table(&ns, mode), before, "clean left or took something");
    // Cleaning a clean table is fine too.
    ns.exec(strait, &["iptables", "--clean", "--mode", mode])
        .unwrap_or_else(|e| panic!("second clean: {e}"));
    assert_eq!(nat_table(&ns, mode), before);
}

#[test]
fn apply_is_idempotent_and_clean_removes_exactly_it_nft() {
    apply_twice_then_clean("nft");
}

#[test]
fn apply_is_idempotent_and_clean_removes_exactly_it_legacy() {
    apply_twice_then_clean("legacy");
}

#[test]
fn a_missing_iptables_says_what_to_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["iptables", "--apply"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run strait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot run iptables") && stderr.contains("installed in this image"),
        "{stderr}"
    );
}
