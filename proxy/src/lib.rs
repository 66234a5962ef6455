//! strait-proxy: the data plane of the strait service mesh.
//!
//! A connection travels through these modules in order:
//! [`listen`] (accept, limits) → [`orig_dst`] (where it was going) →
//! [`detect`] (which protocol) → [`outbound`] or [`inbound`] (which target)
//! → [`http`] (L7 forwarding over a [`pool`]) or [`tcp`] (opaque bytes).
//! [`app`] wires them together and owns shutdown; [`listeners`] runs the
//! listeners the config names and follows it on reload; [`admin`] serves
//! metrics and health; [`metrics`] holds every metric family; [`observe`]
//! turns finished requests into access-log lines and [`tap`] records.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod authz;
pub mod await_ready;
pub mod balance;
pub mod connection;
pub mod detect;
pub mod discovery;
pub mod explain;
#[cfg(test)]
mod footprint;
pub mod http;
pub mod inbound;
pub mod io;
pub mod iptables;
pub mod listen;
pub mod listeners;
pub mod log_level;
pub mod log_limit;
pub mod metrics;
pub mod observe;
pub mod orig_dst;
pub mod outbound;
pub mod pool;
pub mod registry;
pub mod route;
pub mod sni;
pub mod socket;
pub mod stack;
pub mod tap;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod xds;

/// Which way traffic flows through the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the network to the local application.
    Inbound,
    /// From the local application to the network.
    Outbound,
}

impl Direction {
    /// The `direction` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}
