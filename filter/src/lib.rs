//! tollgate's proxy-wasm filter: a thin adapter from Envoy's host calls to `tollgate-core`.
//!
//! Each worker thread runs its own VM: the root context parses the plugin configuration once
//! and shares it with every request context by `Rc`; counters live in Envoy shared data, which
//! all workers of the process see, so limits are exact across threads.

mod host;
mod metrics;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use tollgate_core::config::LoadedConfig;
use tollgate_core::decision::{Denial, Reason};
use tollgate_core::gateway::{handle_request, Outcome};
use tollgate_core::problem::{self, Problem};

use host::{RequestHeaderMap, SharedData};
use metrics::Metrics;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_COMMIT: &str = env!("TOLLGATE_GIT_COMMIT");

proxy_wasm::main! {{
    // Also installs the SDK's panic hook, which sends a panic's message to Envoy's log.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TollgateRoot::default()) });
}}

#[derive(Default)]
struct TollgateRoot {
    config: Option<Rc<LoadedConfig>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for TollgateRoot {}

impl RootContext for TollgateRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!("tollgate filter {VERSION} ({GIT_COMMIT}) starting");
        self.metrics = Some(Rc::new(Metrics::define()));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log::error!("tollgate: refusing to start: the plugin configuration is empty");
            return false;
        };
        match LoadedConfig::parse(&bytes) {
            Ok(config) => {
                if let Some(index) = &config.index {
                    log::info!(
                        "tollgate: configured, snapshot revision {}",
                        index.revision()
                    );
                }
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                log::error!("tollgate: invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TollgateRequest {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            response_headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TollgateRequest {
    config: Option<Rc<LoadedConfig>>,
    metrics: Option<Rc<Metrics>>,
    /// Rate-limit headers decided at request time, added to the upstream's response.
    response_headers: Vec<(&'static str, String)>,
}

impl Context for TollgateRequest {}

impl HttpContext for TollgateRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            self.count(Reason::NotConfigured);
            return respond(&tollgate_core::decision::not_configured());
        };
        let handled = host::now_ms().and_then(|now_ms| {
            handle_request(&config, &mut RequestHeaderMap, &mut SharedData, now_ms)
        });
        match handled {
            Ok(handled) => {
                self.count(handled.reason);
                if let Some(m) = &self.metrics {
                    m.cas_retries(handled.cas_retries);
                }
                match handled.outcome {
                    Outcome::Forward { response_headers } => {
                        self.response_headers = response_headers;
                        Action::Continue
                    }
                    Outcome::Respond(denial) => respond(&denial),
                }
            }
            Err(e) => {
                // Fail closed: a request we could not check is not forwarded.
                log::warn!("tollgate: {}", e.0);
                if let Some(m) = &self.metrics {
                    m.host_error();
                }
                respond(&tollgate_core::decision::deny(
                    Reason::CounterUnavailable,
                    Problem::new(
                        "gateway-error",
                        "Service Unavailable",
                        503,
                        "the gateway could not check this request",
                    ),
                ))
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            if let Err(e) = host::add_response_header(name, &value) {
                log::warn!("tollgate: {}", e.0);
            }
        }
        Action::Continue
    }
}

impl TollgateRequest {
    fn count(&self, reason: Reason) {
        if let Some(m) = &self.metrics {
            m.request(reason);
        }
    }
}

/// Sends a local reply with its headers (a filter's own response-header callback is not
/// guaranteed to run for local replies) and stops the request.
fn respond(denial: &Denial) -> Action {
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(denial.headers.len() + 1);
    headers.push(("content-type", problem::CONTENT_TYPE));
    headers.extend(denial.headers.iter().map(|(n, v)| (*n, v.as_str())));
    if let Err(e) =
        host::send_response(denial.status, &headers, denial.problem.to_json().as_bytes())
    {
        log::warn!("tollgate: {}", e.0);
    }
    Action::Pause
}
