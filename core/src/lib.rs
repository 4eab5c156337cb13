//! tollgate's gateway logic, free of proxy-wasm so that all of it is tested natively.
//!
//! - [`snapshot`]: the catalogue schema shared by the control plane and the filter;
//! - [`config`]: the filter's plugin configuration, validated at load;
//! - [`index`]: the snapshot compiled for the gateway: routing table and key-directory buckets;
//! - [`host`]: host names in the one normal form the gateway and the control plane share;
//! - [`keydir`]: the key directory kept in shared data (key → client, contracts, limits);
//! - [`keycache`]: a worker's bounded cache of directory buckets, evicted per revision;
//! - [`path`]: path normal form and the key's query parameter;
//! - [`keys`], [`signing`]: key hashing and snapshot signatures;
//! - [`distribution`]: verifying fetched snapshots and handing them to every worker;
//! - [`time`], [`limits`]: calendar windows and the one admission algorithm;
//! - [`lease`]: worker-local quota leases claimed from the shared counter;
//! - [`fleet`]: fleet-wide counting: grants from the control plane's Redis-backed broker;
//! - [`shared`]: the shared-data contract (Envoy's semantics) and an in-memory mirror;
//! - [`decision`], [`problem`]: the verdict for one request and its RFC 9457 body;
//! - [`token`]: JWT bearer tokens verified against the snapshot's trusted issuers;
//! - [`gateway`]: one request end to end over a request-headers trait the filter implements;
//! - [`header_map`]: the proxy-wasm header-map encoding (every header in one host call);
//! - [`usage`]: per-minute usage tallies and the reports gateways ship to the control plane.

pub mod config;
pub mod decision;
pub mod distribution;
pub mod fleet;
pub mod gateway;
pub mod header_map;
pub mod host;
pub mod index;
pub mod keycache;
pub mod keydir;
pub mod keys;
pub mod lease;
pub mod limits;
pub mod path;
pub mod problem;
pub mod shared;
pub mod signing;
pub mod snapshot;
pub mod time;
pub mod token;
pub mod usage;

#[cfg(test)]
mod testkit;
