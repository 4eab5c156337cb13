//! The wasm floor for bench/, in two modes chosen by the plugin configuration:
//!
//! - empty configuration: a filter that creates a context per request and lets every callback
//!   take the SDK's default (continue). Envoy still makes each per-request call into the VM, so
//!   this is the floor any proxy-wasm filter, tollgate included, stands on;
//! - `replay-tollgate-host-calls`: per request, exactly the host calls tollgate's allow path
//!   makes (read from filter/src and core/src/gateway.rs), with constant arguments and no
//!   logic in between. Its cost over the floor is what those host calls cost; tollgate's cost
//!   over it is tollgate's own work (hashing, lookups, window math, allocations).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot { replay: false }) });
}}

const REPLAY: &[u8] = b"replay-tollgate-host-calls";
const COUNTER_KEY: &str = "bench.contract.1";
const BUCKET_KEY: &str = "bench.keys.0001";
/// The size of the key-directory bucket of part 1's key: one record with one two-limit contract
/// (core/src/keydir.rs: digest, expiry, client, contract id, API, plan, limits).
const BUCKET_VALUE: [u8; 113] = [1; 113];
/// The size of tollgate's counter value for a plan with two limits (format byte + 2 slots).
const COUNTER_VALUE: [u8; 35] = [1; 35];

struct FloorRoot {
    /// Set in replay mode.
    replay: bool,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        if self.get_plugin_configuration().as_deref() == Some(REPLAY) {
            self.replay = true;
            // The bucket the replayed request reads, as tollgate's key directory holds it.
            return hostcalls::set_shared_data(BUCKET_KEY, Some(&BUCKET_VALUE), None).is_ok();
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.replay {
            Some(Box::new(ReplayRequest))
        } else {
            Some(Box::new(NoopRequest))
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopRequest;

impl Context for NoopRequest {}

impl HttpContext for NoopRequest {}

struct ReplayRequest;

impl Context for ReplayRequest {}

impl HttpContext for ReplayRequest {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        // Errors are ignored: this filter measures calls, it decides nothing.
        let request = MapType::HttpRequestHeaders;
        let _ = hostcalls::get_current_time();
        let _ = hostcalls::get_map_value(request, ":path");
        // No `:authority`: tollgate reads it only when some API version routes by host.
        let _ = hostcalls::get_map_value(request, "x-api-key");
        let _ = hostcalls::get_shared_data(BUCKET_KEY);
        let cas = hostcalls::get_shared_data(COUNTER_KEY).ok().and_then(|(_, cas)| cas);
        let _ = hostcalls::set_shared_data(COUNTER_KEY, Some(&COUNTER_VALUE), cas);
        let _ = hostcalls::set_map_value(request, "x-tollgate-client", Some("acme/mobile/1"));
        let _ = hostcalls::set_map_value(request, "x-tollgate-plan", Some("acme/gold/1"));
        let _ = hostcalls::set_map_value(request, "x-api-key", None);
        // No metric call: tollgate tallies decisions in the VM and flushes them on its tick.
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let response = MapType::HttpResponseHeaders;
        let _ = hostcalls::add_map_value(response, "x-ratelimit-limit", "1000000000000");
        let _ = hostcalls::add_map_value(response, "x-ratelimit-remaining", "999999999999");
        let _ = hostcalls::add_map_value(response, "x-ratelimit-reset", "86399");
        Action::Continue
    }
}
