//! tollgate's control plane: the catalogue service (`tollgate serve`), the signed snapshot it
//! serves to gateways, and the CLI over its HTTP API.

pub mod catalogue;
pub mod cli;
pub mod domain;
pub mod envoy_config;
pub mod error;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tokens;
