//! The iptables rules that make strait transparent, for an init container
//! (`strait iptables --apply`) or an operator to read (`strait iptables`).
//! Inbound TCP (nat PREROUTING) is redirected to the inbound listener and
//! outbound TCP (nat OUTPUT) to the outbound listener; the proxy's own
//! traffic (by uid), loopback and listed ports are left alone.

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
}

/// The rules as argument lists for `iptables` / `ip6tables`.
pub fn rules(r: &Redirect) -> Vec<Vec<String>> {
    let mut rules: Vec<Vec<String>> = Vec::new();
    let mut rule = |args: &str| rules.push(args.split_whitespace().map(String::from).collect());
    rule("-t nat -N STRAIT_INBOUND_REDIRECT");
    rule(&format!(
        "-t nat -A STRAIT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        r.inbound_port
    ));
    rule("-t nat -N STRAIT_INBOUND");
    for port in &r.skip_inbound_ports {
        rule(&format!(
            "-t nat -A STRAIT_INBOUND -p tcp --dport {port} -j RETURN"
        ));
    }
    rule("-t nat -A STRAIT_INBOUND -p tcp -j STRAIT_INBOUND_REDIRECT");
    rule("-t nat -A PREROUTING -p tcp -j STRAIT_INBOUND");
    rule("-t nat -N STRAIT_OUTBOUND_REDIRECT");
    rule(&format!(
        "-t nat -A STRAIT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        r.outbound_port
    ));
    rule("-t nat -N STRAIT_OUTBOUND");
    // The proxy's own upstream connections must leave as they are, or they loop.
    rule(&format!(
        "-t nat -A STRAIT_OUTBOUND -m owner --uid-owner {} -j RETURN",
        r.proxy_uid
    ));
    // The app talking to itself (and to the proxy) on loopback stays local.
    rule("-t nat -A STRAIT_OUTBOUND -o lo -j RETURN");
    for port in &r.skip_outbound_ports {
        rule(&format!(
            "-t nat -A STRAIT_OUTBOUND -p tcp --dport {port} -j RETURN"
        ));
    }
    rule("-t nat -A STRAIT_OUTBOUND -p tcp -j STRAIT_OUTBOUND_REDIRECT");
    rule("-t nat -A OUTPUT -p tcp -j STRAIT_OUTBOUND");
    rules
}

fn program(r: &Redirect) -> &'static str {
    if r.ipv6 {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// The rules as a shell script.
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

/// Install the rules, stopping at the first that fails.
pub fn apply(r: &Redirect) -> Result<(), String> {
    let program = program(r);
    for args in rules(r) {
        let output = Command::new(program).args(&args).output().map_err(|e| {
            format!("cannot run {program}: {e} (is it installed, and are we root?)")
        })?;
        if !output.status.success() {
            return Err(format!(
                "{program} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }
    Ok(())
}
