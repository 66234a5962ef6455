//! Wires the proxy together and owns its lifecycle: bind every listener
//! (so a bad address fails before anything starts), start the admin and
//! control thread, run the accept loops on the data-plane runtime, reload
//! the config file on change or SIGHUP (listeners follow it, see
//! [`crate::listeners`]), and on SIGTERM/SIGINT or `POST /shutdown` stop
//! accepting, drain open connections up to the grace period, and exit.

use crate::admin::AdminState;
use crate::http::Inputs;
use crate::listeners::{self, Listeners, MakeInputs};
use crate::metrics::Metrics;
use crate::pool::{PoolSettings, Pools};
use crate::registry::{Registry, Resolved};
use crate::route::Snapshot;
use crate::Direction;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use strait_config::Config;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

/// How often the config file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Run the proxy until it is told to stop. `config_path` is watched for
/// changes when given.
pub fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    raise_fd_limit();
    // The file as it was read at startup: a change after this is a change,
    // however late the watcher task starts.
    let config_file = config_path.map(|path| {
        let stamp = file_stamp(&path);
        (path, stamp)
    });
    let metrics = Metrics::new();
    let tracer = crate::trace::Tracer::new(&metrics.registry);
    let tls = match &config.identity {
        Some(identity) => Some(
            crate::tls::Tls::load(identity, metrics.clone())
                .context("cannot load the workload identity (identity: section)")?,
        ),
        None => None,
    };
    let pool_settings = PoolSettings {
        idle_timeout: config.proxy.pool_idle_timeout,
        max_idle_per_endpoint: config.proxy.pool_max_idle_per_endpoint,
        tcp_keepalive: config.proxy.tcp_keepalive,
    };
    let workers = match config.runtime.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let max_connections = config.proxy.max_connections;
    let grace = config.proxy.shutdown_grace;
    let discovery = crate::discovery::Discovery::new();
    let registry = Registry::new(metrics.clone());
    let clusters = registry.update(&config, &Resolved::new());
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
        config.clone(),
        &clusters,
    )));
    // The xDS client, when configured, applies its merged config to the
    // registry and routing snapshot as a reload does.
    let extra_views = listeners::ExtraViews::default();
    let xds = crate::xds::Xds::new(
        &config,
        Box::new({
            let (snapshot, discovery, registry, extra) = (
                snapshot.clone(),
                discovery.clone(),
                registry.clone(),
                extra_views.clone(),
            );
            move |config| apply_xds(config, &snapshot, &discovery, &registry, &extra)
        }),
        metrics.clone(),
        tls.clone(),
    );
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let observe = crate::observe::Observers::new(&config.access_log, &metrics)?;

    // One worker runs on a current-thread runtime: no work-stealing queues
    // or cross-thread wakeups, which the load benchmark shows is cheaper.
    // Built before anything listens: listeners started from the control
    // thread (at startup and on reload) run their accept loops on it.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut multi = tokio::runtime::Builder::new_multi_thread();
        multi.worker_threads(workers);
        multi
    };
    let rt = builder
        .thread_name("strait-proxy")
        .enable_all()
        .build()
        .context("cannot start the proxy runtime")?;

    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        snapshot: snapshot.clone(),
        ready: ready.clone(),
        shutdown: shutdown.clone(),
        xds: xds.clone(),
        observe: observe.clone(),
        listening: Default::default(),
    });
    let admin_stop = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let drain = CancellationToken::new();
    let tracker = TaskTracker::new();
    let make_inputs: MakeInputs = {
        // The pools' reapers run on the data-plane runtime.
        let _rt = rt.enter();
        let data = DataPath::new(
            pool_settings,
            metrics.clone(),
            tls.clone(),
            tracer.clone(),
            observe.clone(),
        );
        Arc::new(move |direction, snapshot| inputs(&data, direction, snapshot))
    };
    let mut listeners = Listeners::new(listeners::Shared {
        data: rt.handle().clone(),
        make_inputs,
        snapshot: snapshot.clone(),
        limit: Arc::new(Semaphore::new(max_connections)),
        tracker: tracker.clone(),
        stop_accepting: stop_accepting.clone(),
        drain: drain.clone(),
        admin: admin_state.clone(),
        admin_stop: admin_stop.clone(),
        extra_views,
    });
    // Bind every listener before anything starts: a bad address fails here.
    let plan = listeners.plan(&config)?;
    let bound = plan.bound();
    let _ = admin_state.listening.set(bound.clone());
    let addr = |name: &str| {
        bound
            .get(name)
            .copied()
            .with_context(|| format!("the {name} listener has no local address"))
    };
    let (outbound_addr, inbound_addr, admin_addr) =
        (addr("outbound")?, addr("inbound")?, addr("admin")?);

    // Admin and control work run on their own thread and runtime.
    // The control thread says when its signal handling is in place and
    // the listeners are started; the proxy is not "up" (ready, listening
    // line) before that.
    let (control_up, control_started) = std::sync::mpsc::sync_channel::<()>(1);
    let control = {
        let stop = admin_stop.clone();
        let snapshot = snapshot.clone();
        let tls = tls.clone();
        std::thread::Builder::new()
            .name("strait-admin".into())
            .spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the admin runtime")?;
                rt.block_on(async move {
                    // SIGHUP means "reload", and its default action kills
                    // the process: take it over before the proxy is up.
                    let hup =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
                    // The exporter runs here, off the data-plane runtime.
                    tracer.apply(config.tracing.as_ref());
                    listeners.apply(plan, &config, &clusters).await;
                    if let Some(tls) = tls {
                        tokio::spawn(tls.watch(stop.clone()));
                    }
                    if let Some(xds) = xds.clone() {
                        tokio::spawn(xds.run(stop.clone()));
                    }
                    tokio::spawn(discovery.clone().run(
                        snapshot.clone(),
                        registry.clone(),
                        stop.clone(),
                    ));
                    if let Some((path, stamp)) = config_file {
                        let reloader = Reloader {
                            snapshot,
                            metrics,
                            discovery,
                            registry,
                            listeners: Arc::new(tokio::sync::Mutex::new(listeners)),
                            xds,
                            tracer,
                            observe,
                        };
                        let watched = Watched {
                            path,
                            seen: stamp,
                            hup,
                        };
                        tokio::spawn(watch_config(watched, reloader, stop.clone()));
                    }
                    let _ = control_up.send(());
                    stop.cancelled().await;
                    Ok(())
                })
            })
            .context("cannot start the admin thread")?
    };
    // Err: the control thread failed first; joining it below says why.
    let _ = control_started.recv();

    let result = rt.block_on(async {
        tokio::spawn(wait_for_signal(shutdown.clone()));

        // Ready first, then say so: whoever reads the line below may ask
        // /ready at once and must get 200.
        ready.store(true, Ordering::Release);
        info!(%outbound_addr, %inbound_addr, %admin_addr, workers, "strait is ready");
        // One machine-readable line on stdout for scripts and tests.
        let mut stdout = std::io::stdout();
        let _ = writeln!(
            stdout,
            "strait listening outbound={outbound_addr} inbound={inbound_addr} admin={admin_addr}"
        );
        let _ = stdout.flush();

        shutdown.cancelled().await;
        ready.store(false, Ordering::Release);
        info!(
            ?grace,
            open = tracker.len(),
            "shutting down: no new connections, draining open ones"
        );
        stop_accepting.cancel();
        drain.cancel();
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                open = tracker.len(),
                "grace period over; closing the remaining connections"
            );
        } else {
            info!("every connection drained");
        }
        anyhow::Ok(())
    });
    admin_stop.cancel();
    match control.join() {
        Ok(Err(e)) => error!(error = %e, "admin thread failed"),
        Err(_) => error!("admin thread panicked"),
        Ok(Ok(())) => {}
    }
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

/// What the listeners of the data plane share: each direction's
/// connection pools, the metrics and the workload identity.
struct DataPath {
    outbound: Arc<Pools>,
    inbound: Arc<Pools>,
    metrics: Arc<Metrics>,
    tls: Option<Arc<crate::tls::Tls>>,
    tracer: Arc<crate::trace::Tracer>,
    observe: Arc<crate::observe::Observers>,
}

impl DataPath {
    /// Call inside the data-plane runtime: the pools' reapers start.
    fn new(
        settings: PoolSettings,
        metrics: Arc<Metrics>,
        tls: Option<Arc<crate::tls::Tls>>,
        tracer: Arc<crate::trace::Tracer>,
        observe: Arc<crate::observe::Observers>,
    ) -> Self {
        let pools = |direction| {
            let pools = Pools::new(direction, settings, metrics.clone(), tls.clone());
            pools.spawn_reaper();
            pools
        };
        DataPath {
            outbound: pools(Direction::Outbound),
            inbound: pools(Direction::Inbound),
            metrics,
            tls,
            tracer,
            observe,
        }
    }
}

/// The one place the data path's [`Inputs`] are built: for a listener of
/// `direction` whose traffic routes by `snapshot`. Listeners of one
/// direction share its pools.
fn inputs(data: &DataPath, direction: Direction, snapshot: Arc<ArcSwap<Snapshot>>) -> Arc<Inputs> {
    let pools = match direction {
        Direction::Outbound => data.outbound.clone(),
        Direction::Inbound => data.inbound.clone(),
    };
    Arc::new(Inputs {
        direction,
        snapshot,
        pools,
        metrics: data.metrics.clone(),
        tls: data.tls.clone(),
        tracer: data.tracer.clone(),
        observe: data.observe.clone(),
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            error!(error = %e, "cannot listen for SIGTERM/SIGINT; use POST /shutdown to stop");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
        _ = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}

/// The config file `watch_config` follows: its path, its stamp when it
/// was read, and the SIGHUP stream, registered before the proxy is up.
struct Watched {
    path: PathBuf,
    seen: Option<FileStamp>,
    hup: Option<tokio::signal::unix::Signal>,
}

/// Reload the config when the file changes or on SIGHUP. A file that does
/// not validate is refused with its error, and the running config stays.
///
/// Editors and tools truncate a file before they write it, so a change
/// seen by polling is read only once the file's size and mtime have held
/// still across two polls; and on reload an empty file is refused rather
/// than taken as the embedded default (see [`read_for_reload`]).
async fn watch_config(watched: Watched, reloader: Reloader, stop: CancellationToken) {
    let Watched {
        path,
        mut seen,
        mut hup,
    } = watched;
    // A change seen on the last poll, waiting to hold still for one more.
    let mut settling: Option<FileStamp> = None;
    let mut tick = tokio::time::interval(CONFIG_POLL);
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(hup) => hup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup_recv => info!(path = %path.display(), "SIGHUP: reloading config"),
            _ = tick.tick() => {
                let Some(now) = file_stamp(&path) else {
                    continue;
                };
                if Some(now) == seen {
                    settling = None;
                    continue;
                }
                if settling != Some(now) {
                    debug!(path = %path.display(), "config file changed: waiting for it to hold still");
                    settling = Some(now);
                    continue;
                }
                settling = None;
                seen = Some(now);
                info!(path = %path.display(), "config file changed: reloading");
            }
        }
        reloader.reload(&path).await;
    }
}

/// A file's (mtime, size): when either moves, the file changed.
type FileStamp = (SystemTime, u64);

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Why a file was not even parsed on reload.
#[derive(Debug, thiserror::Error)]
enum ReloadRefused {
    #[error("the file is empty (truncated, or still being written?); an empty file means the embedded default only at startup")]
    Empty,
    #[error(transparent)]
    Invalid(#[from] strait_config::ConfigError),
}

/// Read the config file for a reload. An empty (or whitespace-only) file
/// is refused: at startup it means the embedded default, but on a reload
/// it is far likelier a file caught between truncate and write.
fn read_for_reload(path: &Path) -> Result<Config, ReloadRefused> {
    let source =
        std::fs::read_to_string(path).map_err(|source| strait_config::ConfigError::Read {
            path: path.display().to_string(),
            error: source,
        })?;
    if source.trim().is_empty() {
        return Err(ReloadRefused::Empty);
    }
    let mut config = Config::from_yaml(&source)?;
    config.apply_env(|k| std::env::var(k).ok())?;
    Ok(config)
}

/// What a reload changes: the routing snapshot, the registry's clusters
/// and endpoints, and the listeners.
struct Reloader {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    discovery: Arc<crate::discovery::Discovery>,
    registry: Arc<Registry>,
    listeners: Arc<tokio::sync::Mutex<Listeners>>,
    xds: Option<Arc<crate::xds::Xds>>,
    tracer: Arc<crate::trace::Tracer>,
    observe: Arc<crate::observe::Observers>,
}

impl Reloader {
    /// Apply the file at `path`, or refuse it whole: a file that does not
    /// validate, or a listener that cannot be bound, changes nothing.
    async fn reload(&self, path: &Path) {
        let config = match read_for_reload(path) {
            Ok(config) => config,
            Err(e) => return self.refused(path, &e),
        };
        let mut listeners = self.listeners.lock().await;
        // Bound before anything changes: a port in use refuses the reload.
        let plan = match listeners.plan(&config) {
            Ok(plan) => plan,
            Err(e) => return self.refused(path, &e),
        };
        // Log files opened before anything changes: one that cannot be
        // opened refuses the reload.
        let logs = match self.observe.prepare_logs(&config.access_log) {
            Ok(logs) => logs,
            Err(e) => return self.refused(path, &format!("{e:#}")),
        };
        if self.snapshot.load().config.identity != config.identity {
            warn!("the identity section changed: it takes effect on restart (rotations of the files it names are picked up live)");
        }
        // The control plane's resources stay beside the new file's.
        let config = match &self.xds {
            Some(xds) => match xds.rebase(config) {
                Ok(merged) => merged,
                Err(e) => return self.refused(path, &e),
            },
            None => config,
        };
        // Clusters and endpoints that stay keep their state.
        let clusters = self.registry.update(&config, &self.discovery.resolved());
        self.snapshot
            .store(Arc::new(Snapshot::build(config.clone(), &clusters)));
        listeners.apply(plan, &config, &clusters).await;
        self.tracer.apply(config.tracing.as_ref());
        self.observe.install_logs(logs);
        self.metrics
            .config_reload_total
            .with_label_values(&["ok"])
            .inc();
        info!(path = %path.display(), "config reloaded");
    }

    fn refused(&self, path: &Path, error: &dyn std::fmt::Display) {
        self.metrics
            .config_reload_total
            .with_label_values(&["error"])
            .inc();
        error!(path = %path.display(), error = %error, "config reload refused; the running config keeps serving");
    }
}

/// Apply a config from the xDS client: clusters and endpoints that stay
/// keep their state. Listeners are the file's, so they do not move; the
/// views of `listeners.extra` are rebuilt (their inbound policy must
/// follow the control plane's as the built-in listeners' does).
fn apply_xds(
    config: Config,
    snapshot: &ArcSwap<Snapshot>,
    discovery: &crate::discovery::Discovery,
    registry: &Registry,
    extra: &listeners::ExtraViews,
) {
    let clusters = registry.update(&config, &discovery.resolved());
    extra.rebuild(&config, &clusters);
    snapshot.store(Arc::new(Snapshot::build(config, &clusters)));
}

/// Raise the open-file soft limit to the hard limit: a proxy holds two
/// descriptors per proxied connection, and 1024 is a common default.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
}
