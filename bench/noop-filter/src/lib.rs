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
/// The size of tollgate's counter value for a plan with two limits (format byte + 2 slots).
const COUNTER_VALUE: [u8; 35] = [1; 35];

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
}

/// The raw call tollgate makes (filter/src/host.rs), without the SDK's per-header decoding.
fn get_all_request_headers() {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: pointers are valid for the call; on Ok the host allocated `size` bytes through
    // this module's allocator (proxy_on_memory_allocate), which this adopts and frees.
    unsafe {
        if proxy_get_header_map_pairs(0, &mut data, &mut size) == 0 && !data.is_null() {
            drop(Vec::from_raw_parts(data, size, size));
        }
    }
}

struct FloorRoot {
    /// Set in replay mode.
    replay: bool,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        if self.get_plugin_configuration().as_deref() == Some(REPLAY) {
            self.replay = true;
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
        // Every request header in one call (path, key, and the names of x-tollgate-* headers).
        get_all_request_headers();
        // No bucket read: a worker's bucket cache holds the key's bucket after its first
        // request (core/src/keycache.rs).
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
