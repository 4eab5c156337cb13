//! The host calls the request path makes, each returning a typed error instead of panicking.
//!
//! The proxy-wasm SDK's wrappers panic on any status they do not expect, and a panic traps the
//! VM (every later request on that worker then fails). These declarations call the same ABI
//! functions and turn every status into a `Result`. Buffers the host returns are allocated
//! through the SDK's exported `proxy_on_memory_allocate`, i.e. by this module's global
//! allocator, so they are adopted as `Vec`s exactly as the SDK does.

use std::ptr::{null, null_mut};

use tollgate_core::config::ControlPlane;
use tollgate_core::gateway::RequestHeaders;
use tollgate_core::header_map::HeaderBlock;
use tollgate_core::shared::{SetOutcome, SharedStore, StoreError};

const STATUS_OK: u32 = 0;
const STATUS_NOT_FOUND: u32 = 1;
const STATUS_CAS_MISMATCH: u32 = 8;

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const CALL_RESPONSE_HEADERS: u32 = 6;
const CALL_RESPONSE_BODY: u32 = 4;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_register_shared_queue(
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_resolve_shared_queue(
        vm_id_data: *const u8,
        vm_id_size: usize,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_enqueue_shared_queue(queue_id: u32, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(
        queue_id: u32,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

fn failed(call: &str, status: u32) -> StoreError {
    StoreError(format!(
        "host call {call} failed with proxy-wasm status {status}"
    ))
}

/// Adopts a buffer the host allocated in this module's memory.
///
/// # Safety
/// `data` must be null or a `size`-byte allocation made by `proxy_on_memory_allocate`.
unsafe fn adopt(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// One of the header maps of the current context.
pub struct HeaderMap(u32);

impl HeaderMap {
    /// The headers of the request being decided.
    pub fn request() -> Self {
        HeaderMap(REQUEST_HEADERS)
    }

    /// The headers of the upstream's response to the request.
    pub fn response() -> Self {
        HeaderMap(RESPONSE_HEADERS)
    }

    /// The headers of the response to the poller's snapshot request.
    pub fn call_response() -> Self {
        HeaderMap(CALL_RESPONSE_HEADERS)
    }
}

impl RequestHeaders for HeaderMap {
    fn all(&mut self) -> Result<HeaderBlock, StoreError> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: pointers are valid for the call; the host fills data/size on Ok.
        let status = unsafe { proxy_get_header_map_pairs(self.0, &mut data, &mut size) };
        match status {
            STATUS_OK => {
                // SAFETY: on Ok the host allocated `size` bytes through our allocator.
                let bytes = unsafe { adopt(data, size) };
                HeaderBlock::decode(bytes).map_err(|_| {
                    StoreError("host call get_header_map_pairs returned a malformed map".into())
                })
            }
            STATUS_NOT_FOUND => Ok(HeaderBlock::default()),
            other => Err(failed("get_header_map_pairs", other)),
        }
    }

    fn get(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: pointers are valid for the call; the host fills data/size on Ok.
        let status = unsafe {
            proxy_get_header_map_value(self.0, name.as_ptr(), name.len(), &mut data, &mut size)
        };
        match status {
            STATUS_OK => {
                // SAFETY: on Ok the host allocated `size` bytes through our allocator.
                let bytes = unsafe { adopt(data, size) };
                // Header values are bytes; a non-UTF-8 value is read lossily (it can only
                // fail to match a key or a route, never panic).
                Ok(Some(match String::from_utf8(bytes) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                }))
            }
            STATUS_NOT_FOUND => Ok(None),
            other => Err(failed("get_header_map_value", other)),
        }
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), StoreError> {
        // SAFETY: pointers are valid for the call.
        let status = unsafe {
            proxy_replace_header_map_value(
                self.0,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        match status {
            STATUS_OK => Ok(()),
            other => Err(failed("replace_header_map_value", other)),
        }
    }

    fn remove(&mut self, name: &str) -> Result<(), StoreError> {
        // SAFETY: pointers are valid for the call.
        let status = unsafe { proxy_remove_header_map_value(self.0, name.as_ptr(), name.len()) };
        match status {
            STATUS_OK | STATUS_NOT_FOUND => Ok(()),
            other => Err(failed("remove_header_map_value", other)),
        }
    }
}

/// The body of the response to the poller's snapshot request; empty when Envoy dropped it
/// (it drains bodies over its 32 MiB callout limit).
pub fn call_response_body(size: usize) -> Result<Vec<u8>, StoreError> {
    let mut data = null_mut();
    let mut len = 0;
    // SAFETY: pointers are valid for the call; the host fills data/len on Ok.
    let status =
        unsafe { proxy_get_buffer_bytes(CALL_RESPONSE_BODY, 0, size, &mut data, &mut len) };
    match status {
        // SAFETY: on Ok the host allocated `len` bytes through our allocator.
        STATUS_OK => Ok(unsafe { adopt(data, len) }),
        STATUS_NOT_FOUND => Ok(Vec::new()),
        other => Err(failed("get_buffer_bytes", other)),
    }
}

/// A host property such as `plugin_root_id`, as text.
pub fn property(name: &str) -> Result<Option<String>, StoreError> {
    let mut data = null_mut();
    let mut size = 0;
    // A one-segment property path is the name itself (segments are NUL-separated).
    // SAFETY: pointers are valid for the call; the host fills data/size on Ok.
    let status = unsafe { proxy_get_property(name.as_ptr(), name.len(), &mut data, &mut size) };
    match status {
        // SAFETY: on Ok the host allocated `size` bytes through our allocator.
        STATUS_OK => Ok(Some(
            String::from_utf8_lossy(&unsafe { adopt(data, size) }).into_owned(),
        )),
        STATUS_NOT_FOUND => Ok(None),
        other => Err(failed("get_property", other)),
    }
}

pub fn add_response_header(name: &str, value: &str) -> Result<(), StoreError> {
    // SAFETY: pointers are valid for the call.
    let status = unsafe {
        proxy_add_header_map_value(
            RESPONSE_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    match status {
        STATUS_OK => Ok(()),
        other => Err(failed("add_header_map_value", other)),
    }
}

/// Envoy shared data of this filter's `vm_id`: one map for every worker of the process.
pub struct SharedData;

impl SharedStore for SharedData {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let mut data = null_mut();
        let mut size = 0;
        let mut cas = 0;
        // SAFETY: pointers are valid for the call; the host fills them on Ok.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            // SAFETY: on Ok the host allocated `size` bytes through our allocator.
            STATUS_OK => Ok(Some((unsafe { adopt(data, size) }, cas))),
            STATUS_NOT_FOUND => Ok(None),
            other => Err(failed("get_shared_data", other)),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
        // SAFETY: pointers are valid for the call.
        let status = unsafe {
            proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        };
        match status {
            STATUS_OK => Ok(SetOutcome::Written),
            STATUS_CAS_MISMATCH => Ok(SetOutcome::CasMismatch),
            other => Err(failed("set_shared_data", other)),
        }
    }
}

/// Unix time in milliseconds, from Envoy's clock.
pub fn now_ms() -> Result<u64, StoreError> {
    let mut nanos = 0u64;
    // SAFETY: the pointer is valid for the call.
    match unsafe { proxy_get_current_time_nanoseconds(&mut nanos) } {
        STATUS_OK => Ok(nanos / 1_000_000),
        other => Err(failed("get_current_time_nanoseconds", other)),
    }
}

/// Answers the request locally with these headers and body.
pub fn send_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), StoreError> {
    let serialized = HeaderBlock::encode(headers);
    // SAFETY: pointers are valid for the call.
    let result = unsafe {
        proxy_send_local_response(
            u32::from(status),
            null(),
            0,
            body.as_ptr(),
            body.len(),
            serialized.as_ptr(),
            serialized.len(),
            -1,
        )
    };
    match result {
        STATUS_OK => Ok(()),
        other => Err(failed("send_local_response", other)),
    }
}

pub fn increment_metric(id: u32, by: u32) {
    // A failed increment loses a count and nothing else; there is no one to tell.
    // SAFETY: no pointers involved.
    let _ = unsafe { proxy_increment_metric(id, i64::from(by)) };
}

pub fn record_metric(id: u32, value: u64) {
    // SAFETY: no pointers involved.
    let _ = unsafe { proxy_record_metric(id, value) };
}

/// `Bearer <gateway token>`, the token read from the module's environment (WASI environ: the
/// variables Envoy lists in `vm_config.environment_variables`), or why it is missing.
pub fn gateway_authorization(control_plane: &ControlPlane) -> Result<String, String> {
    let name = &control_plane.gateway_token_env;
    std::env::var(name)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"))
        .ok_or_else(|| {
            format!(
                "the module's environment has no {name}: start Envoy with {name} set and list it \
                 in vm_config.environment_variables.host_env_keys"
            )
        })
}

const STATUS_EMPTY: u32 = 7;

/// Registers (or finds again) this VM's shared queue `name`; its id.
pub fn register_queue(name: &str) -> Result<u32, StoreError> {
    let mut id = 0;
    // SAFETY: pointers are valid for the call.
    match unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) } {
        STATUS_OK => Ok(id),
        other => Err(failed("register_shared_queue", other)),
    }
}

/// The id of shared queue `name` of `vm_id`; `None` while nobody has registered it.
pub fn resolve_queue(vm_id: &str, name: &str) -> Result<Option<u32>, StoreError> {
    let mut id = 0;
    // SAFETY: pointers are valid for the call.
    let status = unsafe {
        proxy_resolve_shared_queue(
            vm_id.as_ptr(),
            vm_id.len(),
            name.as_ptr(),
            name.len(),
            &mut id,
        )
    };
    match status {
        STATUS_OK => Ok(Some(id)),
        STATUS_NOT_FOUND => Ok(None),
        other => Err(failed("resolve_shared_queue", other)),
    }
}

pub fn enqueue(queue: u32, value: &[u8]) -> Result<(), StoreError> {
    // SAFETY: pointers are valid for the call.
    match unsafe { proxy_enqueue_shared_queue(queue, value.as_ptr(), value.len()) } {
        STATUS_OK => Ok(()),
        other => Err(failed("enqueue_shared_queue", other)),
    }
}

/// The next message on `queue`; `None` when it is empty.
pub fn dequeue(queue: u32) -> Result<Option<Vec<u8>>, StoreError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: pointers are valid for the call; the host fills data/size on Ok.
    match unsafe { proxy_dequeue_shared_queue(queue, &mut data, &mut size) } {
        // SAFETY: on Ok the host allocated `size` bytes through our allocator.
        STATUS_OK => Ok(Some(unsafe { adopt(data, size) })),
        STATUS_EMPTY => Ok(None),
        other => Err(failed("dequeue_shared_queue", other)),
    }
}
