//! The iptables rules that make strait transparent, for an init container
//! (`strait iptables --apply`) or an operator to read (`strait iptables`).
//! Inbound TCP (nat PREROUTING) is redirected to the inbound listener and
//! outbound TCP (nat OUTPUT) to the outbound listener; the proxy's own
//! traffic (by uid), loopback and listed ports are left alone.
//!
//! Everything strait installs lives in four chains of its own plus one
//! jump from each of PREROUTING and OUTPUT. `apply` is idempotent (a
//! restarted init container creates what is missing, refills its own
//! chains and never adds a second jump) and `clean` removes exactly
//! those chains and jumps, leaving every other rule alone. It runs the
//! `iptables` binary (or `iptables-nft` / `iptables-legacy`, by mode) and
//! depends on nothing else in the crate.

use std::process::Command;

/// Parameters of the redirect.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// The uid the proxy runs as; its own connections are not redirected.
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Inbound destination ports left alone (e.g. the admin port for Prometheus).
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub skip_outbound_ports: Vec<u16>,
    /// Emit ip6tables rules instead of iptables.
    pub ipv6: bool,
    /// Which iptables backend to run.
    pub mode: Mode,
}

/// The iptables backend: whatever `iptables` is on the PATH, or one of
/// the two explicitly (a node's kube-proxy decides which one the pod's
/// rules must use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Default,
    Nft,
    Legacy,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "default" => Ok(Mode::Default),
            "nft" => Ok(Mode::Nft),
            "legacy" => Ok(Mode::Legacy),
            other => Err(format!(
                "'{other}' is not an iptables mode: default (the iptables on PATH), nft or legacy"
            )),
        }
    }
}

/// One of strait's chains and the rules in it, in order.
struct Chain {
    name: &'static str,
    rules: Vec<String>,
}

const INBOUND_REDIRECT: &str = "STRAIT_INBOUND_REDIRECT";
const INBOUND: &str = "STRAIT_INBOUND";
const OUTBOUND_REDIRECT: &str = "STRAIT_OUTBOUND_REDIRECT";
const OUTBOUND: &str = "STRAIT_OUTBOUND";

/// strait's chains, a chain listed before the chains that jump to it.
fn chains(r: &Redirect) -> Vec<Chain> {
    let mut inbound: Vec<String> = r
        .skip_inbound_ports
        .iter()
        .map(|port| format!("-p tcp --dport {port} -j RETURN"))
        .collect();
    inbound.push(format!("-p tcp -j {INBOUND_REDIRECT}"));
    let mut outbound = vec![
        // The proxy's own upstream connections must leave as they are, or they loop.
        format!("-m owner --uid-owner {} -j RETURN", r.proxy_uid),
        // The app talking to itself (and to the proxy) on loopback stays local.
        "-o lo -j RETURN".to_string(),
    ];
    outbound.extend(
        r.skip_outbound_ports
            .iter()
            .map(|port| format!("-p tcp --dport {port} -j RETURN")),
    );
    outbound.push(format!("-p tcp -j {OUTBOUND_REDIRECT}"));
    vec![
        Chain {
            name: INBOUND_REDIRECT,
            rules: vec![format!("-p tcp -j REDIRECT --to-ports {}", r.inbound_port)],
        },
        Chain {
            name: INBOUND,
            rules: inbound,
        },
        Chain {
            name: OUTBOUND_REDIRECT,
            rules: vec![format!("-p tcp -j REDIRECT --to-ports {}", r.outbound_port)],
        },
        Chain {
            name: OUTBOUND,
            rules: outbound,
        },
    ]
}

/// The jumps from the built-in chains into strait's: (chain, rule).
fn jumps() -> [(&'static str, String); 2] {
    [
        ("PREROUTING", format!("-p tcp -j {INBOUND}")),
        ("OUTPUT", format!("-p tcp -j {OUTBOUND}")),
    ]
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

/// The rules of a fresh install, as argument lists for `iptables`.
pub fn rules(r: &Redirect) -> Vec<Vec<String>> {
    let chains = chains(r);
    let mut out = Vec::new();
    for chain in &chains {
        out.push(args(&format!("-t nat -N {}", chain.name)));
        for rule in &chain.rules {
            out.push(args(&format!("-t nat -A {} {rule}", chain.name)));
        }
        // Each direction's jump right after its entry chain, as before.
        for (builtin, rule) in jumps() {
            if rule.ends_with(&format!("-j {}", chain.name)) {
                out.push(args(&format!("-t nat -A {builtin} {rule}")));
            }
        }
    }
    out
}

/// The program for the family and mode.
pub fn program(r: &Redirect) -> &'static str {
    match (r.ipv6, r.mode) {
        (false, Mode::Default) => "iptables",
        (false, Mode::Nft) => "iptables-nft",
        (false, Mode::Legacy) => "iptables-legacy",
        (true, Mode::Default) => "ip6tables",
        (true, Mode::Nft) => "ip6tables-nft",
        (true, Mode::Legacy) => "ip6tables-legacy",
    }
}

/// The rules of a fresh install as a shell script.
pub fn script(r: &Redirect) -> String {
    let program = program(r);
    let mut out = String::from("#!/bin/sh\nset -e\n");
    for args in rules(r) {
        out.push_str(program);
        out.push(' ');
        out.push_str(&args.join(" "));
        out.push('\n');
    }
    out
}

/// Runs one iptables program.
struct Iptables {
    program: &'static str,
}

impl Iptables {
    /// Run one command line: Err when the program cannot run at all,
    /// Ok(Err) when it ran and said no (a `-C` check that found nothing,
    /// a chain that does not exist).
    fn try_run(&self, line: &str) -> Result<Result<(), String>, String> {
        let output = Command::new(self.program)
            .args(args(line))
            // Not /dev/null (what `output` would open): the init image
            // may have no /dev, and iptables reads nothing.
            .stdin(std::process::Stdio::inherit())
            .output()
            .map_err(|e| {
                format!(
                    "cannot run {}: {e} (is it installed in this image, and are we root with NET_ADMIN?)",
                    self.program
                )
            })?;
        if output.status.success() {
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "{} {line} failed: {}",
                self.program,
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    fn run(&self, line: &str) -> Result<(), String> {
        self.try_run(line)?
    }

    fn succeeds(&self, line: &str) -> Result<bool, String> {
        Ok(self.try_run(line)?.is_ok())
    }

    fn chain_exists(&self, chain: &str) -> Result<bool, String> {
        self.succeeds(&format!("-t nat -S {chain}"))
    }
}

/// Install the rules. Idempotent: missing chains are created, strait's
/// chains are refilled (so changed ports take effect on a rerun), and a
/// jump already in PREROUTING/OUTPUT is not added again.
pub fn apply(r: &Redirect) -> Result<(), String> {
    let ipt = Iptables {
        program: program(r),
    };
    let chains = chains(r);
    for chain in &chains {
        if ipt.chain_exists(chain.name)? {
            ipt.run(&format!("-t nat -F {}", chain.name))?;
        } else {
            ipt.run(&format!("-t nat -N {}", chain.name))?;
        }
    }
    for chain in &chains {
        for rule in &chain.rules {
            ipt.run(&format!("-t nat -A {} {rule}", chain.name))?;
        }
    }
    for (builtin, rule) in jumps() {
        if !ipt.succeeds(&format!("-t nat -C {builtin} {rule}"))? {
            ipt.run(&format!("-t nat -A {builtin} {rule}"))?;
        }
    }
    Ok(())
}

/// Remove exactly what [`apply`] installs: the jumps from PREROUTING and
/// OUTPUT (every copy) and strait's four chains. Other rules stay; a
/// clean of a clean namespace succeeds.
pub fn clean(r: &Redirect) -> Result<(), String> {
    let ipt = Iptables {
        program: program(r),
    };
    for (builtin, rule) in jumps() {
        while ipt.succeeds(&format!("-t nat -C {builtin} {rule}"))? {
            ipt.run(&format!("-t nat -D {builtin} {rule}"))?;
        }
    }
    let chains = chains(r);
    let present: Vec<&Chain> = chains
        .iter()
        .filter_map(|c| match ipt.chain_exists(c.name) {
            Ok(true) => Some(Ok(c)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    // Flush all first: the entry chains jump to the redirect chains, and
    // a chain still referenced cannot be deleted.
    for chain in &present {
        ipt.run(&format!("-t nat -F {}", chain.name))?;
    }
    for chain in &present {
        ipt.run(&format!("-t nat -X {}", chain.name))?;
    }
    Ok(())
}
