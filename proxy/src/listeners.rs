//! Listener lifecycle: which listeners run, keyed by name as a listener
//! discovery service (Envoy LDS) keys them, and how a new config changes
//! them without a restart. A change is planned first and applied only
//! when every new socket is bound, so a port in use refuses the change
//! and the running listeners keep serving. Applying it:
//!
//! - a new name binds and serves;
//! - a moved listener serves on its new address, then its old socket
//!   closes (connect refused) and its connections drain;
//! - a removed listener closes its socket at once and drains;
//! - an address that passes to another listener (a rename, a changed
//!   direction) keeps its socket: only the connections drain.
//!
//! Draining fires the connections' drain token (HTTP/1 answers carry
//! `Connection: close`, HTTP/2 gets GOAWAY, requests in flight finish);
//! connections still open after `proxy.shutdown_grace` are closed. A
//! listener's settings other than address and direction (default
//! cluster, protocol, forward address) change in place, through the
//! routing snapshot its traffic reads. The admin listener moves the same
//! way.
//!
//! Plans and changes run on the control thread (the admin server runs
//! there too); accept loops run on the data-plane runtime through its
//! handle. Depends on `listen`, `socket`, `route`, `admin`.

use crate::admin::{self, AdminState};
use crate::http::Inputs;
use crate::listen::{self, AcceptContext};
use crate::route::{Clusters, Snapshot};
use crate::{socket, Direction};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use strait_config::{Config, ListenerDirection, NamedListener};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Builds the data path's inputs for a listener of one direction reading
/// one routing snapshot (app.rs owns their shape).
pub type MakeInputs = Arc<dyn Fn(Direction, Arc<ArcSwap<Snapshot>>) -> Arc<Inputs> + Send + Sync>;

/// What every listener shares.
pub struct Shared {
    /// The data-plane runtime, where accept loops and connections run.
    pub data: tokio::runtime::Handle,
    pub make_inputs: MakeInputs,
    /// The routing snapshot of the whole config; the built-in listeners read it.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Permits for open connections, shared by every listener.
    pub limit: Arc<Semaphore>,
    /// Every connection of the proxy, for shutdown.
    pub tracker: TaskTracker,
    /// Fires at shutdown: every listener stops accepting...
    pub stop_accepting: CancellationToken,
    /// ...and every connection drains.
    pub drain: CancellationToken,
    pub admin: Arc<AdminState>,
    /// Fires when the admin server stops.
    pub admin_stop: CancellationToken,
    /// The extra listeners' snapshots, for config changes outside a reload.
    pub extra_views: ExtraViews,
}

/// The extra listeners' own routing snapshots by name, so that whoever
/// swaps in a new config outside a file reload (an xDS update) rebuilds
/// them too: their inbound policy and routes follow the control plane at
/// once, as the built-in listeners' do.
#[derive(Clone, Default)]
pub struct ExtraViews(Arc<Mutex<ViewsByName>>);

/// Each extra listener's spec and the snapshot its traffic reads.
type ViewsByName = BTreeMap<String, (NamedListener, Arc<ArcSwap<Snapshot>>)>;

impl ExtraViews {
    /// Rebuild every extra listener's snapshot from `config`.
    pub fn rebuild(&self, config: &Config, clusters: &Clusters) {
        for (spec, v) in self.lock().values() {
            v.store(Arc::new(view(config, spec, clusters)));
        }
    }

    fn set(&self, spec: &NamedListener, v: &Arc<ArcSwap<Snapshot>>) {
        self.lock()
            .insert(spec.name.clone(), (spec.clone(), v.clone()));
    }

    fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewsByName> {
        // A panic elsewhere cannot leave the map half-written: take it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the {name} listener on {addr}: {source}; is the port in use by another process, or the address not on this host?")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// The running listeners.
pub struct Listeners {
    shared: Shared,
    running: BTreeMap<String, Running>,
    admin: Option<RunningAdmin>,
}

struct Running {
    spec: NamedListener,
    local: SocketAddr,
    /// The snapshot this listener's traffic routes by: the shared one for
    /// the built-in listeners, its own (rebuilt on each change) otherwise.
    view: Arc<ArcSwap<Snapshot>>,
    stop: CancellationToken,
    drain: CancellationToken,
    close: CancellationToken,
    conns: TaskTracker,
    /// Gives the socket back once the accept loop stopped.
    accept: JoinHandle<TcpListener>,
}

struct RunningAdmin {
    /// As configured (port 0 stays 0, so it is not taken for a move).
    addr: SocketAddr,
    stop: CancellationToken,
}

/// Where a listener in a plan gets its socket.
enum Source {
    Bound(std::net::TcpListener),
    /// The socket of the running listener of this name, which goes.
    HandedOver(String),
}

/// A change to the running listeners whose sockets are all bound.
pub struct Plan {
    start: Vec<(NamedListener, Source)>,
    /// Running listeners that stop: removed, moved, or handing over.
    retire: Vec<String>,
    /// Listeners whose settings change in place.
    keep: Vec<NamedListener>,
    admin: Option<(SocketAddr, std::net::TcpListener)>,
}

impl Plan {
    /// The addresses bound by this plan, by listener name (`admin` too).
    pub fn bound(&self) -> HashMap<String, SocketAddr> {
        let mut out: HashMap<String, SocketAddr> = self
            .start
            .iter()
            .filter_map(|(spec, source)| match source {
                Source::Bound(l) => Some((spec.name.clone(), l.local_addr().ok()?)),
                Source::HandedOver(_) => None,
            })
            .collect();
        if let Some((_, l)) = &self.admin {
            if let Ok(addr) = l.local_addr() {
                out.insert("admin".into(), addr);
            }
        }
        out
    }

    /// Whether applying this plan changes which sockets listen where.
    pub fn changes_sockets(&self) -> bool {
        !self.start.is_empty() || !self.retire.is_empty() || self.admin.is_some()
    }
}

fn direction(d: ListenerDirection) -> Direction {
    match d {
        ListenerDirection::Inbound => Direction::Inbound,
        ListenerDirection::Outbound => Direction::Outbound,
    }
}

/// The built-in data listeners route by the shared snapshot as it is.
fn built_in(spec: &NamedListener) -> bool {
    matches!(spec.name.as_str(), "outbound" | "inbound")
}

fn bind(name: &str, addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener, BindError> {
    socket::bind_listener(addr, backlog).map_err(|source| BindError {
        name: name.to_string(),
        addr,
        source,
    })
}

impl Listeners {
    pub fn new(shared: Shared) -> Listeners {
        Listeners {
            shared,
            running: BTreeMap::new(),
            admin: None,
        }
    }

    /// Bind what `config` adds or moves; nothing changes yet. An error
    /// names the listener and address that could not be bound.
    pub fn plan(&self, config: &Config) -> Result<Plan, BindError> {
        let backlog = config.proxy.backlog;
        let mut plan = Plan {
            start: Vec::new(),
            retire: Vec::new(),
            keep: Vec::new(),
            admin: None,
        };
        let wanted = config.listeners();
        for spec in wanted.iter().cloned() {
            if let Some(r) = self.running.get(&spec.name) {
                if r.spec.addr == spec.addr && r.spec.direction == spec.direction {
                    plan.keep.push(spec);
                    continue;
                }
            }
            // An address another (or this) running listener gives up keeps
            // its socket: binding it again would fail while it is open.
            let holder = self
                .running
                .values()
                .find(|r| spec.addr.port() != 0 && r.spec.addr == spec.addr);
            let source = match holder {
                Some(r) => Source::HandedOver(r.spec.name.clone()),
                None => Source::Bound(bind(&spec.name, spec.addr, backlog)?),
            };
            plan.start.push((spec, source));
        }
        plan.retire = self
            .running
            .keys()
            .filter(|name| !plan.keep.iter().any(|k| &k.name == *name))
            .cloned()
            .collect();
        if self.admin.as_ref().is_none_or(|a| a.addr != config.admin) {
            plan.admin = Some((config.admin, bind("admin", config.admin, backlog)?));
        }
        Ok(plan)
    }

    /// Apply `plan`, made from `config`, whose clusters the registry
    /// gave as `clusters`. Runs on the control runtime. Whoever swaps in
    /// a new config (a file reload; later an xDS update) applies it here
    /// too, so the extra listeners' routing snapshots follow it.
    pub async fn apply(&mut self, plan: Plan, config: &Config, clusters: &Clusters) {
        let Plan {
            start,
            retire,
            keep,
            admin,
        } = plan;
        for spec in keep {
            if let Some(r) = self.running.get_mut(&spec.name) {
                if !built_in(&spec) {
                    r.view.store(Arc::new(view(config, &spec, clusters)));
                    self.shared.extra_views.set(&spec, &r.view);
                }
                r.spec = spec;
            }
        }
        // New sockets are bound and queue connections already; stop the
        // old ones, then start serving on the new.
        let mut handed: HashMap<String, TcpListener> = HashMap::new();
        for name in retire {
            let Some(r) = self.running.remove(&name) else {
                continue;
            };
            self.shared.extra_views.remove(&name);
            let successor = start.iter().find_map(|(spec, source)| match source {
                Source::HandedOver(from) if *from == name => Some(spec.name.as_str()),
                _ => None,
            });
            if let Some(socket) = self.retire(r, successor, config).await {
                handed.insert(name, socket);
            }
        }
        for (spec, source) in start {
            let listener = match source {
                Source::Bound(std) => {
                    let _runtime = self.shared.data.enter();
                    match socket::into_tokio(std) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(listener = %spec.name, addr = %spec.addr, error = %e, "cannot register the listener's socket; it does not serve");
                            continue;
                        }
                    }
                }
                Source::HandedOver(from) => match handed.remove(&from) {
                    Some(l) => l,
                    None => {
                        warn!(listener = %spec.name, addr = %spec.addr, from = %from, "the socket to take over was lost; the listener does not serve");
                        continue;
                    }
                },
            };
            self.start(spec, listener, config, clusters);
        }
        if let Some((addr, std)) = admin {
            self.move_admin(addr, std);
        }
    }

    fn start(
        &mut self,
        spec: NamedListener,
        listener: TcpListener,
        config: &Config,
        clusters: &Clusters,
    ) {
        let local = listener.local_addr().unwrap_or(spec.addr);
        let view = if built_in(&spec) {
            self.shared.snapshot.clone()
        } else {
            let v = Arc::new(ArcSwap::from_pointee(view(config, &spec, clusters)));
            self.shared.extra_views.set(&spec, &v);
            v
        };
        let shared = &self.shared;
        let (stop, drain) = (
            shared.stop_accepting.child_token(),
            shared.drain.child_token(),
        );
        let (close, conns) = (CancellationToken::new(), TaskTracker::new());
        let ctx = AcceptContext {
            name: Arc::from(spec.name.as_str()),
            inputs: (shared.make_inputs)(direction(spec.direction), view.clone()),
            limit: shared.limit.clone(),
            tracker: shared.tracker.clone(),
            conns: conns.clone(),
            stop_accepting: stop.clone(),
            drain: drain.clone(),
            close: close.clone(),
        };
        let accept = shared.data.spawn(listen::accept_loop(listener, ctx));
        info!(listener = %spec.name, direction = %direction(spec.direction).as_str(), addr = %local, "listener serving");
        let running = Running {
            spec,
            local,
            view,
            stop,
            drain,
            close,
            conns,
            accept,
        };
        self.running.insert(running.spec.name.clone(), running);
    }

    /// Stop `r` accepting and drain its connections. Its socket is
    /// returned when the listener `handing_to` takes it over, closed
    /// otherwise.
    async fn retire(
        &self,
        r: Running,
        handing_to: Option<&str>,
        config: &Config,
    ) -> Option<TcpListener> {
        r.stop.cancel();
        // The loop returns at once; at shutdown the data runtime may be
        // gone, and the socket with it.
        let socket = tokio::select! {
            joined = r.accept => joined.ok(),
            _ = self.shared.stop_accepting.cancelled() => None,
        };
        r.drain.cancel();
        r.conns.close();
        let (name, addr, open) = (r.spec.name, r.local, r.conns.len());
        let socket = match handing_to {
            Some(to) => {
                info!(listener = %name, %addr, to = %to, open, "listener hands its socket over; draining its connections");
                socket
            }
            None => {
                drop(socket);
                info!(listener = %name, %addr, open, "listener stopped accepting; draining its connections");
                None
            }
        };
        // Say when the connections are gone; close those still open
        // after the grace period.
        let (conns, close, grace) = (r.conns, r.close, config.proxy.shutdown_grace);
        tokio::spawn(async move {
            if tokio::time::timeout(grace, conns.wait()).await.is_err() {
                warn!(listener = %name, %addr, open = conns.len(), ?grace, "listener still has open connections after the grace period; closing them");
                close.cancel();
                conns.wait().await;
            }
            info!(listener = %name, %addr, "listener drained");
        });
        socket
    }

    /// Serve the admin endpoints on `std` (bound to `addr`), then stop
    /// the admin server that ran before, if any.
    fn move_admin(&mut self, addr: SocketAddr, std: std::net::TcpListener) {
        let listener = match socket::into_tokio(std) {
            Ok(l) => l,
            Err(e) => {
                warn!(%addr, error = %e, "cannot register the admin socket; the admin server stays where it was");
                return;
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        let stop = self.shared.admin_stop.child_token();
        tokio::spawn(admin::serve(
            listener,
            self.shared.admin.clone(),
            stop.clone(),
        ));
        if let Some(old) = self.admin.replace(RunningAdmin { addr, stop }) {
            old.stop.cancel();
            info!(from = %old.addr, addr = %local, "admin listener moved");
        } else {
            info!(addr = %local, "admin listener serving");
        }
    }
}

/// The routing snapshot of `config` as the traffic of `spec` sees it.
fn view(config: &Config, spec: &NamedListener, clusters: &Clusters) -> Snapshot {
    Snapshot::build(config.for_listener(spec), clusters)
}
