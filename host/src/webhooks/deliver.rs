//! The delivery task: sends due deliveries (one in flight per endpoint, 2 per tenant,
//! 8 overall, tenants taken in turn),
//! signs them, and records retries, failures and disabling.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::address::{PublicOnly, public_host};
use super::{CONCURRENCY, Delivery, MAX_BACKOFF, Webhooks, lock};
use crate::model::{DeliveryState, WebhookState};
use crate::store::now_ms;

impl Webhooks {
    /// Starts the delivery task; it ends when `stop` is cancelled.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) {
        tokio::spawn(deliver_loop(self.clone(), stop));
    }
}

/// The signature header value: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`
/// with the secret's key (the base64 after `whsec_`).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any size");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Checks a `webhook-signature` header (space-separated `v1,<base64>` entries, any of
/// which may match) against the signature of `id.timestamp.body` under `secret`, in
/// constant time per entry: what a receiver does.
pub fn verify(secret: &str, id: &str, timestamp: i64, body: &str, header: &str) -> bool {
    use subtle::ConstantTimeEq;
    let expected = sign(secret, id, timestamp, body);
    header
        .split(' ')
        .filter(|entry| entry.starts_with("v1,"))
        .fold(false, |found, entry| {
            found | bool::from(entry.as_bytes().ct_eq(expected.as_bytes()))
        })
}

/// The wait before attempt `attempts + 1`: `base * 2^(attempts-1)`, capped, with
/// "equal jitter" (half fixed, half random) so endpoints that recover are not hit by
/// every sender at once.
fn backoff(base: Duration, attempts: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Sends due deliveries until `stop` is cancelled.
async fn deliver_loop(hooks: Arc<Webhooks>, stop: CancellationToken) {
    // No proxy from the environment: a proxy would connect for us, skipping the
    // public-address check of the resolver below.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(hooks.config.timeout)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    for root in &hooks.config.extra_roots {
        builder = builder.add_root_certificate(root.clone());
    }
    if !hooks.config.allow_private {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    let http = builder.build().expect("building the webhook client");
    let sending = Arc::new(Semaphore::new(CONCURRENCY));
    // Endpoints with an attempt in flight: one at a time per endpoint, so they see
    // deliveries in order and a failing one is not hit by a burst.
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    // Attempts in flight per tenant.
    let in_flight: Arc<Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    loop {
        let woken = hooks.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if !hooks.store.leads() {
            // Another coordinator sharing the journal delivers; this one waits to lead.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                () = stop.cancelled() => return,
            }
        }
        let now = now_ms();
        let claim_until = now + hooks.config.timeout.as_millis() as i64 + 5_000;
        let due = match hooks.store.due(now, CONCURRENCY * 32) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading due webhook deliveries");
                Vec::new()
            }
        };
        let mut started = 0;
        let mut blocked = false;
        // Fair between tenants: due deliveries are taken round robin by tenant, each
        // tenant with at most PER_TENANT attempts in flight, so one tenant's slow
        // endpoints hold PER_TENANT of the CONCURRENCY slots, never all of them.
        for delivery in round_robin(&hooks, due) {
            let tenant = hooks.tenant_of(&delivery.webhook);
            if lock(&in_flight).get(&tenant).copied().unwrap_or(0) >= PER_TENANT {
                blocked = true;
                continue;
            }
            let Ok(permit) = sending.clone().try_acquire_owned() else {
                blocked = true;
                break;
            };
            if !lock(&busy).insert(delivery.webhook.clone()) {
                blocked = true;
                continue;
            }
            if let Err(e) = hooks.store.claim(&delivery.id, claim_until) {
                tracing::error!(error = %e, "claiming a webhook delivery");
                lock(&busy).remove(&delivery.webhook);
                continue;
            }
            *lock(&in_flight).entry(tenant.clone()).or_default() += 1;
            started += 1;
            let (hooks, http, busy, in_flight) =
                (hooks.clone(), http.clone(), busy.clone(), in_flight.clone());
            tokio::spawn(async move {
                let webhook = delivery.webhook.clone();
                attempt(&hooks, &http, delivery).await;
                lock(&busy).remove(&webhook);
                {
                    let mut in_flight = lock(&in_flight);
                    if let Some(n) = in_flight.get_mut(&tenant) {
                        *n -= 1;
                        if *n == 0 {
                            in_flight.remove(&tenant);
                        }
                    }
                }
                drop(permit);
                hooks.wake.notify_one();
            });
        }
        if started > 0 && !blocked {
            continue;
        }
        // Due deliveries of busy endpoints wait for their attempt to end (it wakes
        // this loop); otherwise sleep until the next one is due.
        let next = if blocked {
            None
        } else {
            hooks.store.next_due().ok().flatten()
        };
        let sleep = next.map_or(Duration::from_secs(60), |at| {
            Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64)
        });
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(sleep.min(Duration::from_secs(60))) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Attempts of one tenant in flight at most.
pub const PER_TENANT: usize = 2;

/// `due` (oldest first) taken one tenant at a time in turn: each tenant's own
/// deliveries keep their order.
fn round_robin(hooks: &Webhooks, due: Vec<Delivery>) -> Vec<Delivery> {
    let mut tenants: Vec<(String, std::collections::VecDeque<Delivery>)> = Vec::new();
    for delivery in due {
        let tenant = hooks.tenant_of(&delivery.webhook);
        match tenants.iter_mut().find(|(t, _)| *t == tenant) {
            Some((_, queue)) => queue.push_back(delivery),
            None => tenants.push((tenant, std::collections::VecDeque::from([delivery]))),
        }
    }
    let mut order = Vec::new();
    while tenants.iter().any(|(_, queue)| !queue.is_empty()) {
        for (_, queue) in &mut tenants {
            order.extend(queue.pop_front());
        }
    }
    order
}

/// One attempt of one delivery, and what it means for the delivery and its endpoint.
/// Tells the change feed how an attempt ended (`pending`: it will be tried again).
fn announce(
    hooks: &Webhooks,
    hook: &super::Webhook,
    delivery: &Delivery,
    state: DeliveryState,
    attempts: u32,
    status: Option<u16>,
) {
    let change = serde_json::json!({
        "kind": "delivery",
        "id": delivery.id,
        "webhook": hook.id,
        "event": delivery.event,
        "state": state,
        "attempts": attempts,
        "last_status": status,
    });
    hooks.changed(&hook.tenant, change);
}

async fn attempt(hooks: &Webhooks, http: &reqwest::Client, delivery: Delivery) {
    let Ok(Some(hook)) = hooks.store.unscoped().webhook(&delivery.webhook) else {
        return;
    };
    if hook.state != WebhookState::Active {
        let _ = hooks
            .store
            .fail_pending(&hook.id, "the endpoint is disabled");
        return;
    }
    let body = delivery.payload.to_string();
    let timestamp = now_ms() / 1000;
    // Addresses in the URL itself are not resolved, so they are checked here.
    let allowed = match reqwest::Url::parse(&hook.url) {
        Ok(url) if !hooks.config.allow_private => public_host(&url),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let sent = match allowed {
        Ok(()) => http
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("wasmesh/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                sign(&hook.secret, &delivery.id, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| format!("sending: {e:#}")),
        Err(why) => Err(format!("refused: {why}")),
    };
    let attempts = delivery.attempts + 1;
    let (status, error) = match sent {
        Ok(response) if response.status().is_success() => {
            let status = Some(response.status().as_u16());
            if let Err(e) = hooks
                .store
                .end_attempt(
                    &delivery.id,
                    DeliveryState::Delivered,
                    attempts,
                    0,
                    status,
                    None,
                )
                .and_then(|()| {
                    hooks
                        .store
                        .set_webhook_state(&hook.id, WebhookState::Active, 0, None)
                })
            {
                tracing::error!(delivery = %delivery.id, error = %e, "recording a webhook delivery");
            }
            announce(
                hooks,
                &hook,
                &delivery,
                DeliveryState::Delivered,
                attempts,
                status,
            );
            return;
        }
        Ok(response) => (
            Some(response.status().as_u16()),
            format!("the endpoint answered {}", response.status()),
        ),
        Err(error) => (None, error),
    };
    let config = &hooks.config;
    let failures = hook.failures + 1;
    let mut ended = DeliveryState::Failed;
    let recorded = if failures >= config.disable_after {
        let reason = format!("disabled after {failures} consecutive failed attempts");
        tracing::warn!(webhook = %hook.id, url = %hook.url, "{reason}");
        hooks
            .store
            .end_attempt(
                &delivery.id,
                DeliveryState::Failed,
                attempts,
                0,
                status,
                Some(&error),
            )
            .and_then(|()| {
                hooks.store.set_webhook_state(
                    &hook.id,
                    WebhookState::Disabled,
                    failures,
                    Some(&reason),
                )
            })
            .and_then(|()| hooks.store.fail_pending(&hook.id, &reason).map(|_| ()))
            .and_then(|()| hooks.reload())
    } else {
        // The wait grows with the endpoint's consecutive failures too (an endpoint
        // that keeps timing out is tried less and less often, all its deliveries
        // with it), not only with this delivery's attempts.
        let wait = backoff(config.retry_base, attempts.max(failures));
        let until = now_ms() + wait.as_millis() as i64;
        if failures > 1
            && let Err(e) = hooks.store.defer_pending(&hook.id, until)
        {
            tracing::error!(webhook = %hook.id, error = %e, "putting off a failing endpoint");
        }
        let (state, next) = if attempts >= config.max_attempts {
            (DeliveryState::Failed, 0)
        } else {
            (DeliveryState::Pending, until)
        };
        ended = state;
        hooks
            .store
            .end_attempt(&delivery.id, state, attempts, next, status, Some(&error))
            .and_then(|()| {
                hooks
                    .store
                    .set_webhook_state(&hook.id, WebhookState::Active, failures, None)
            })
    };
    announce(hooks, &hook, &delivery, ended, attempts, status);
    if let Err(e) = recorded {
        tracing::error!(delivery = %delivery.id, error = %e, "recording a failed webhook attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_does_not() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signature = sign(secret, "msg_1", 1614265330, "{}");
        assert!(verify(secret, "msg_1", 1614265330, "{}", &signature));
        let rotated = format!("v1,bm90IGl0 {signature}");
        assert!(verify(secret, "msg_1", 1614265330, "{}", &rotated));
        assert!(!verify(secret, "msg_1", 1614265330, "{ }", &signature));
        assert!(!verify(secret, "msg_2", 1614265330, "{}", &signature));
        assert!(!verify(secret, "msg_1", 1614265331, "{}", &signature));
        assert!(!verify(secret, "msg_1", 1614265330, "{}", ""));
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example in the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let base = Duration::from_millis(100);
        for attempts in 1..=6 {
            let exp = base * (1 << (attempts - 1));
            for _ in 0..50 {
                let wait = backoff(base, attempts);
                assert!(wait >= exp / 2 && wait <= exp, "{attempts}: {wait:?}");
            }
        }
        assert!(backoff(Duration::from_secs(1), 40) <= MAX_BACKOFF);
    }
}
