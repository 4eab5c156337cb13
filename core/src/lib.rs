//! tollgate's gateway logic, free of proxy-wasm so that all of it is tested natively.
//!
//! - [`snapshot`]: the catalogue schema shared by the control plane and the filter;
//! - [`keys`], [`signing`]: key hashing and snapshot signatures;
//! - [`time`], [`limits`]: calendar windows and the one admission algorithm;
//! - [`counter`]: the counter store contract (Envoy shared data semantics) and an in-memory one.

pub mod counter;
pub mod keys;
pub mod limits;
pub mod signing;
pub mod snapshot;
pub mod time;
