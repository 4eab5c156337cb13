//! A blocking client for the management API, used by every CLI command but `serve`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use ureq::http::Response;
use ureq::{Agent, Body};

use crate::error::Problem;

/// Large enough for an export of a big catalogue.
const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a problem document.
    #[error("{} ({}, HTTP {})", .0.detail, .0.type_uri, .0.status)]
    Problem(Problem),
    #[error("{0}")]
    Other(String),
}

pub struct ApiClient {
    agent: Agent,
    base: String,
    authorization: String,
}

impl ApiClient {
    pub fn new(server: &str, admin_token: &str) -> Self {
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        ApiClient {
            agent,
            base: server.trim_end_matches('/').to_owned(),
            authorization: format!("Bearer {admin_token}"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .agent
            .get(self.url(path))
            .header("authorization", &self.authorization)
            .call();
        self.decode(path, response)
    }

    /// Follows `next_cursor` until the last page; returns all items.
    pub fn get_all(&self, path: &str) -> Result<Vec<Value>, ClientError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page_path = match &cursor {
                None => format!("{path}?limit=500"),
                Some(c) => format!("{path}?limit=500&cursor={c}"),
            };
            let page: Value = self.get(&page_path)?;
            if let Some(list) = page.get("items").and_then(Value::as_array) {
                items.extend(list.iter().cloned());
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(items),
            }
        }
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let response = self
            .agent
            .post(self.url(path))
            .header("authorization", &self.authorization)
            .send_json(body);
        self.decode(path, response)
    }

    pub fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .agent
            .post(self.url(path))
            .header("authorization", &self.authorization)
            .send_empty();
        self.decode(path, response)
    }

    pub fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let response = self
            .agent
            .put(self.url(path))
            .header("authorization", &self.authorization)
            .send_json(body);
        self.decode(path, response)
    }

    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        let response = self
            .agent
            .delete(self.url(path))
            .header("authorization", &self.authorization)
            .call();
        let mut response = self.connected(response)?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(problem(path, &mut response))
    }

    fn connected(
        &self,
        response: Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, ClientError> {
        response.map_err(|e| {
            ClientError::Other(format!(
                "cannot reach the control plane at {}: {e}",
                self.base
            ))
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        path: &str,
        response: Result<Response<Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut response = self.connected(response)?;
        if !response.status().is_success() {
            return Err(problem(path, &mut response));
        }
        let text = read_body(&mut response)?;
        serde_json::from_str(&text)
            .map_err(|e| ClientError::Other(format!("unexpected answer from {path}: {e}")))
    }
}

fn read_body(response: &mut Response<Body>) -> Result<String, ClientError> {
    response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_string()
        .map_err(|e| ClientError::Other(format!("reading the answer: {e}")))
}

fn problem(path: &str, response: &mut Response<Body>) -> ClientError {
    let status = response.status();
    let text = read_body(response).unwrap_or_default();
    match serde_json::from_str::<Problem>(&text) {
        Ok(problem) => ClientError::Problem(problem),
        Err(_) => ClientError::Other(format!("{path}: HTTP {status}: {}", text.trim())),
    }
}
