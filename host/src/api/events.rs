//! `GET /compute/events`: the change feed as server-sent events (see
//! [`crate::engine::feed`]). Each event's `id` is the change's id and its data the
//! change's JSON; `Last-Event-ID` resumes after that change. A tenant sees its own
//! objects' changes; the operator sees every tenant's and the fleet's.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, http};
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::{Role, Tenant};
use crate::api::error::{ApiError, ApiResult};
use crate::engine::Engine;
use crate::engine::feed::{Change, Feed};

/// Who may see a change.
#[derive(Clone)]
struct Viewer {
    tenant: Arc<str>,
    operator: bool,
}

impl Viewer {
    fn sees(&self, change: &Change) -> bool {
        self.operator || change.tenant.as_deref() == Some(&*self.tenant)
    }
}

struct Subscription {
    /// The tenant's place among its open streams, given back when the stream ends.
    _permit: crate::engine::quota::StreamPermit,
    engine: Arc<Engine>,
    viewer: Viewer,
    last: u64,
    latest: tokio::sync::watch::Receiver<u64>,
    ready: VecDeque<Event>,
}

fn event(change: &Change) -> Event {
    Event::default()
        .id(change.id.to_string())
        .data(&*change.data)
}

impl Subscription {
    /// Fills `ready` with what happened after `last`, waiting for something to.
    /// `false` when the server is stopping.
    async fn fill(&mut self) -> bool {
        loop {
            let feed: &Feed = self.engine.feed();
            let read = feed.after(self.last, |c| self.viewer.sees(c));
            if read.gap {
                let reset = json!({"kind": "reset", "reason": "changes after the given id are no longer held: read the state again"});
                self.ready.push_back(
                    Event::default()
                        .id(read.last.to_string())
                        .data(reset.to_string()),
                );
            }
            self.ready.extend(read.changes.iter().map(event));
            let moved = read.last != self.last;
            self.last = read.last;
            if !self.ready.is_empty() {
                return true;
            }
            if moved {
                continue;
            }
            tokio::select! {
                changed = self.latest.changed() => if changed.is_err() { return false },
                () = self.engine.feed().closed().cancelled() => return false,
            }
        }
    }
}

/// The id a reconnecting client saw last.
fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::BadRequest(
            "invalid_request",
            format!("Last-Event-ID is the id of an event of this feed, not {text:?}"),
        )
    })
}

/// `GET /compute/events`.
pub async fn feed(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Extension(role): Extension<Role>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let engine = state.engine.clone();
    // One of the tenant's streams while it is open.
    let permit = engine.admit_stream(&tenant)?;
    let viewer = Viewer {
        tenant: tenant.into(),
        operator: role == Role::Operator,
    };
    let latest = engine.feed().watch();
    let mut ready = VecDeque::new();
    let last = match last_event_id(&headers)? {
        Some(id) => id,
        None => {
            // A new subscriber starts at now, told the id to resume from.
            let now = engine.feed().latest();
            let hello = json!({"kind": "hello", "id": now});
            ready.push_back(Event::default().id(now.to_string()).data(hello.to_string()));
            now
        }
    };
    let subscription = Subscription {
        _permit: permit,
        engine,
        viewer,
        last,
        latest,
        ready,
    };
    let stream = futures_util::stream::unfold(subscription, |mut sub| async move {
        if sub.ready.is_empty() && !sub.fill().await {
            return None;
        }
        let event = sub.ready.pop_front()?;
        Some((Ok::<_, Infallible>(event), sub))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies must pass events on as they come.
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    response
        .headers_mut()
        .insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    Ok(response)
}
