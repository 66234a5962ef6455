//! Which endpoint of the cluster a request goes to, by the cluster's
//! policy ([`crate::balance::cluster::Balancer`]: round robin, least
//! request, random, Peak-EWMA, ring hash on a header or the client's IP),
//! and the endpoint's stack made for it. A request that was never written
//! upstream (the endpoint refused or timed out the connection) goes to
//! another endpoint, up to [`MAX_UNSENT_TRIES`], whatever its method and
//! with or without a retry policy: nothing was sent, so nothing repeats.

use super::split::Upstream;
use super::{Req, Result, Rsp, Step};
use crate::balance::cluster::{ip_hash, request_hash, Balancer};
use crate::http::error::ProxyError;
use crate::http::Target;
use crate::route::RouteTarget;
use pin_project_lite::pin_project;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use strait_config::HashKey;
use tower::Service;

/// How many endpoints a request that could not be sent anywhere tries.
pub const MAX_UNSENT_TRIES: usize = 3;

#[derive(Clone)]
pub struct Balance<M> {
    upstream: Upstream,
    /// The client's address, for ring hashing by source IP.
    client: IpAddr,
    /// The `authority` label of traffic with no cluster.
    no_authority: Arc<str>,
    make: M,
}

impl<M> Balance<M> {
    /// `make` builds the stack of the endpoint picked.
    pub fn new(upstream: Upstream, client: IpAddr, no_authority: Arc<str>, make: M) -> Balance<M> {
        Balance {
            upstream,
            client,
            no_authority,
            make,
        }
    }
}

impl<M, S> Service<Req> for Balance<M>
where
    M: Fn(Target) -> S + Clone,
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Step<Balanced<M, S>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (target, route) = match &self.upstream {
            Upstream::Direct(addr) => (
                Target {
                    addr: *addr,
                    authority: self.no_authority.clone(),
                    route: self.no_authority.clone(),
                    cluster: None,
                    endpoint: None,
                },
                None,
            ),
            Upstream::Cluster(route) => {
                let balancer = route.cluster.balancer();
                let hash = request_hash_for(balancer.hash_key(), &req, self.client);
                match pick_in(&balancer, route, hash, &[]) {
                    Some(target) => (target, Some(route.clone())),
                    None => {
                        return Step::fail(ProxyError::NoEndpoints {
                            cluster: route.cluster.name.to_string(),
                        })
                    }
                }
            }
        };
        if req.retrying {
            req.state.set_upstream(None, Some(target.addr));
        }
        let tried = [Some(target.addr), None, None];
        Step::inner(Balanced {
            future: super::call_ready((self.make)(target), req),
            route,
            make: self.make.clone(),
            tried,
        })
    }
}

/// The ring-hash key of `req`, when its cluster balances by one.
fn request_hash_for(key: Option<&HashKey>, req: &Req, client: IpAddr) -> Option<u64> {
    match key? {
        HashKey::Header(name) => req
            .http
            .headers()
            .get(name.as_str())
            .map(|v| request_hash(v.as_bytes())),
        HashKey::SourceIp => Some(ip_hash(client)),
    }
}

/// An endpoint of `route`'s cluster other than those `tried`.
fn pick(route: &RouteTarget, hash: Option<u64>, tried: &[Option<SocketAddr>]) -> Option<Target> {
    pick_in(&route.cluster.balancer(), route, hash, tried)
}

/// [`pick`] from a balancer already loaded.
fn pick_in(
    balancer: &Balancer,
    route: &RouteTarget,
    hash: Option<u64>,
    tried: &[Option<SocketAddr>],
) -> Option<Target> {
    let endpoint = if tried.is_empty() {
        balancer.pick(hash)?.clone()
    } else {
        (0..balancer.len() * 2)
            .filter_map(|_| balancer.pick(None))
            .find(|e| !tried.contains(&Some(e.addr)))?
            .clone()
    };
    Some(Target {
        addr: endpoint.addr,
        authority: route.authority.clone(),
        route: route.route.clone(),
        cluster: Some(route.cluster.clone()),
        endpoint: Some(endpoint),
    })
}

pin_project! {
    /// One endpoint's answer, or, for a request it never received,
    /// another endpoint's.
    pub struct Balanced<M, S>
    where
        S: Service<Req>,
    {
        #[pin]
        future: Step<S::Future>,
        route: Option<RouteTarget>,
        make: M,
        tried: [Option<SocketAddr>; MAX_UNSENT_TRIES],
    }
}

impl<M, S> Future for Balanced<M, S>
where
    M: Fn(Target) -> S,
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Output = Result;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result> {
        loop {
            let this = self.as_mut().project();
            let (error, request) = match ready!(this.future.poll(cx)) {
                Err(ProxyError::Unsent { error, request }) => (*error, *request),
                other => return Poll::Ready(other),
            };
            let free = this.tried.iter().position(Option::is_none);
            let next = match (this.route.as_ref(), free, error.is_connect_failure()) {
                (Some(route), Some(free), true) => pick(route, None, this.tried).map(|t| (t, free)),
                _ => None,
            };
            let Some((target, free)) = next else {
                return Poll::Ready(Err(error));
            };
            tracing::debug!(next = %target.addr, error = %error, "request not sent; trying another endpoint");
            this.tried[free] = Some(target.addr);
            if request.retrying {
                request.state.set_upstream(None, Some(target.addr));
            }
            let future = super::call_ready((this.make)(target), request);
            self.as_mut().project().future.set(future);
        }
    }
}
