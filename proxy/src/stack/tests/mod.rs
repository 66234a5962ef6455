//! The specification of each layer of the L7 stack, one file per layer:
//! each test drives one layer over a `tower-test` mock (the layer below),
//! with the clock paused wherever time matters, and states one rule.

mod balance;
mod breaker;
mod fault;
mod load;
mod metrics;
mod observe;
mod rate_limit;
mod replay;
mod rescue;
mod retry;
mod split;
pub(crate) mod support;
mod timeout;
