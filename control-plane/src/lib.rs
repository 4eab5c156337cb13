//! tollgate's control plane: the catalogue service (`tollgate serve`), the signed snapshot it
//! serves to gateways, and the CLI over its HTTP API.
//!
//! Three layers, each using only itself and those below (`scripts/check-layers.py` fails CI
//! on an upward use or an import cycle):
//!
//! - the catalogue: [`model`] (resources as they travel in JSON), [`domain`] (ids, versions,
//!   limits, routings), [`error`], [`secrets`], [`tokens`], [`store`] (SQLite and the rendered
//!   snapshot) and [`catalogue`] (`apply`/`export`). No web framework;
//! - the HTTP service over it: [`http`] (routes per resource, OpenAPI, snapshot publication,
//!   the problem answers), [`metrics`] and [`fleet`] (the lease broker of `serve --redis`);
//! - what runs it: [`server`] (one per data directory: [`data_dir_lock`]), [`listener`], the
//!   [`cli`] and [`envoy_config`].

pub mod catalogue;
pub mod cli;
pub mod data_dir_lock;
pub mod domain;
pub mod envoy_config;
pub mod error;
pub mod fleet;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tokens;
