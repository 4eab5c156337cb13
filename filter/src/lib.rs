//! tollgate's proxy-wasm filter: a thin adapter from Envoy's host calls to `tollgate-core`.
//!
//! One module, two roles, chosen by the plugin's `root_id`:
//! - `tollgate-poller`: the singleton `envoy.bootstrap.wasm` service of an Envoy process
//!   (main thread) that long-polls the control plane and publishes each verified snapshot into
//!   shared data ([`poller`]);
//! - anything else (`tollgate` in our configs): the HTTP filter on every worker thread, which
//!   enforces the catalogue from its configuration (static mode) or the latest one in shared
//!   data (live mode) ([`worker`]).

mod fleet;
mod host;
mod lease;
mod metrics;
mod poller;
mod usage;
mod worker;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_COMMIT: &str = env!("TOLLGATE_GIT_COMMIT");

/// The `root_id` that makes a plugin the snapshot poller.
pub const POLLER_ROOT_ID: &str = "tollgate-poller";

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which sends a panic's message to Envoy's log.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::Unconfigured) });
}}

/// The SDK creates root contexts before their `root_id` is known; the role is settled in
/// `on_configure`, where the host's `plugin_root_id` property is available.
enum Root {
    Unconfigured,
    Worker(worker::WorkerRoot),
    Poller(Box<poller::Poller>),
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize, _: usize) {
        match self {
            Root::Poller(p) => p.on_response(token, headers, body_size),
            Root::Worker(w) => w.on_call_response(token, headers, body_size),
            Root::Unconfigured => {}
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!("tollgate filter {VERSION} ({GIT_COMMIT}) starting");
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log::error!("tollgate: refusing to start: the plugin configuration is empty");
            return false;
        };
        let root_id = host::property("plugin_root_id").ok().flatten();
        let configured = if root_id.as_deref() == Some(POLLER_ROOT_ID) {
            poller::Poller::configure(&bytes).map(|p| Root::Poller(Box::new(p)))
        } else {
            worker::WorkerRoot::configure(&bytes).map(Root::Worker)
        };
        match configured {
            Ok(root) => {
                *self = root;
                true
            }
            Err(e) => {
                log::error!("tollgate: invalid configuration: {e}");
                false
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Root::Poller(p) = self {
            p.on_queue_ready(queue_id);
        }
    }

    fn on_tick(&mut self) {
        match self {
            Root::Worker(w) => w.on_tick(),
            Root::Poller(p) => p.on_tick(),
            Root::Unconfigured => {}
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self {
            Root::Worker(w) => Some(Box::new(w.request_context())),
            _ => None,
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        match self {
            Root::Poller(_) => None,
            _ => Some(ContextType::HttpContext),
        }
    }
}
