//! tollgate's gateway logic, free of proxy-wasm so that all of it is tested natively.
//!
//! - [`snapshot`]: the catalogue schema shared by the control plane and the filter;
//! - [`keys`], [`signing`]: key hashing and snapshot signatures.

pub mod keys;
pub mod signing;
pub mod snapshot;
