//! The engine's admission gate: everything a tenant makes that takes memory, disk,
//! CPU or a place is checked (and reserved or charged) here before it is used — jobs
//! and reschedules (`admit_jobs`), retries (`retry_refused`, from `record_many`),
//! uploads before their first byte (`admit_staging`) and blobs before they are stored
//! (`admit_blobs`, against `stored_bytes`: blobs and recordings; recordings and large
//! events are charged there too), event streams (`admit_stream`) and webhooks
//! (`admit_webhook`). Browser sessions are the one resource outside it: they never
//! refuse, each principal's oldest is evicted (`api::session`).
//!
//! Per-tenant quotas: hard caps that refuse a request whole, naming the quota, its
//! limit and the use (`max_queued`, `max_store_bytes`), and the submit rate limit (a
//! token bucket per tenant: `submit_rate` jobs a second, `submit_burst` at once) that
//! asks to retry later. No quota applies unless one is configured.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Engine, EngineError};
use crate::model::HashHex;

/// One tenant's quotas (every field optional: `None` is no limit).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// The tenant's weight in the fair share of slots (default 1; more than 0).
    pub weight: Option<f64>,
    /// Jobs not yet finished (queued, waiting or running) at once.
    pub max_queued: Option<u64>,
    /// Bytes of blobs the tenant holds (uploads past it are refused; outputs of its
    /// jobs are always kept).
    pub max_store_bytes: Option<u64>,
    /// Jobs running at once (slots in use across the fleet): more wait, they are not
    /// refused.
    pub max_running: Option<u64>,
    /// Jobs running at once the tenant is guaranteed while it has work: below it, its
    /// jobs go before other tenants'.
    pub min_running: Option<u64>,
    /// Fuel the tenant's jobs may consume over a sliding hour: past it, submissions
    /// are refused until the hour's consumption falls below it again.
    pub max_fuel_per_hour: Option<u64>,
    /// Jobs a second, sustained.
    pub submit_rate: Option<f64>,
    /// Jobs at once above the rate (default: the rate, at least 1).
    pub submit_burst: Option<u64>,
}

impl Quota {
    /// `self`'s limits, with `defaults` for those it does not set.
    fn or(&self, defaults: &Quota) -> Quota {
        Quota {
            weight: self.weight.or(defaults.weight),
            max_queued: self.max_queued.or(defaults.max_queued),
            max_store_bytes: self.max_store_bytes.or(defaults.max_store_bytes),
            max_running: self.max_running.or(defaults.max_running),
            min_running: self.min_running.or(defaults.min_running),
            max_fuel_per_hour: self.max_fuel_per_hour.or(defaults.max_fuel_per_hour),
            submit_rate: self.submit_rate.or(defaults.submit_rate),
            submit_burst: self.submit_burst.or(defaults.submit_burst),
        }
    }

    /// Refuses values no limit can mean: a weight that is not a positive number, a
    /// negative or non-finite rate.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(weight) = self.weight
            && !(weight.is_finite() && weight > 0.0)
        {
            return Err(format!("weight is {weight}; a weight is a number above 0"));
        }
        if let Some(rate) = self.submit_rate
            && !(rate.is_finite() && rate >= 0.0)
        {
            return Err(format!("submit_rate is {rate}; a rate is a number from 0"));
        }
        Ok(())
    }

    /// The bucket's size: `submit_burst`, else the rate rounded up (at least 1).
    fn burst(&self, rate: f64) -> f64 {
        self.submit_burst
            .map_or_else(|| rate.ceil().max(1.0), |burst| burst as f64)
    }

    /// Checks a hard cap: `used + adding` may not pass `limit`.
    pub fn check(
        field: &str,
        limit: Option<u64>,
        used: u64,
        adding: u64,
        unit: &str,
    ) -> Result<(), EngineError> {
        match limit {
            Some(limit) if used.saturating_add(adding) > limit => Err(EngineError::QuotaExceeded(
                format!("quota {field} is {limit} {unit}; {used} in use, {adding} more asked for"),
            )),
            _ => Ok(()),
        }
    }
}

/// Every tenant's quotas: the `[defaults]` and each tenant's own.
#[derive(Clone, Debug, Default)]
pub struct Quotas {
    defaults: Quota,
    tenants: HashMap<String, Quota>,
}

impl Quotas {
    /// Quotas from the defaults and per-tenant entries.
    pub fn new(defaults: Quota, tenants: HashMap<String, Quota>) -> Self {
        Self { defaults, tenants }
    }

    /// `tenant`'s (min_running, max_running, weight), the weight 1 unless configured,
    /// without building its whole quota (the scheduler asks at every free slot).
    pub fn share_terms(&self, tenant: &str) -> (Option<u64>, Option<u64>, f64) {
        let (own, defaults) = (self.tenants.get(tenant), &self.defaults);
        let field = |get: fn(&Quota) -> Option<u64>| own.and_then(get).or(get(defaults));
        let weight = own
            .and_then(|q| q.weight)
            .or(defaults.weight)
            .unwrap_or(1.0);
        (field(|q| q.min_running), field(|q| q.max_running), weight)
    }

    /// Whether `tenant` is one of the configured ones (its metrics get its own label).
    pub fn lists(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// The quotas of `tenant`: its own, else the defaults, field by field.
    pub fn of(&self, tenant: &str) -> Quota {
        match self.tenants.get(tenant) {
            Some(own) => own.or(&self.defaults),
            None => self.defaults.clone(),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The submit rate limit: one token bucket per tenant that has a `submit_rate`.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes `jobs` tokens from `tenant`'s bucket at `now`, all or none. Refused with
    /// how long until they would be there (`RateLimited`), or `QuotaExceeded` when a
    /// batch is larger than the bucket can ever hold.
    pub fn take(
        &self,
        tenant: &str,
        quota: &Quota,
        jobs: u64,
        now: Instant,
    ) -> Result<(), EngineError> {
        let Some(rate) = quota.submit_rate.filter(|r| *r > 0.0) else {
            return Ok(());
        };
        let burst = quota.burst(rate);
        if jobs as f64 > burst {
            return Err(EngineError::QuotaExceeded(format!(
                "quota submit_burst is {burst} jobs; a batch of {jobs} can never fit"
            )));
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        let wanted = jobs as f64;
        if bucket.tokens >= wanted {
            bucket.tokens -= wanted;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((wanted - bucket.tokens) / rate);
        Err(EngineError::RateLimited(
            format!("submit_rate is {rate} jobs/s (burst {burst}); retry in {wait:.1?}"),
            wait,
        ))
    }
}

/// Uploads one tenant may stage at once (blob bodies, packages, keyed bodies spooled
/// while they are fingerprinted): each holds a file on disk until it is committed.
pub const MAX_STAGING: usize = 8;

/// Places a kind of resource's tenants hold (uploads being staged, open streams):
/// how many each holds, and the bytes those reserved against its `max_store_bytes`.
#[derive(Debug, Default)]
pub struct Places(Mutex<HashMap<String, (usize, u64)>>);

/// One place of a tenant and the bytes it reserved; both are given back when it is
/// dropped (the upload ended, committed or not; the stream ended or its client left).
#[derive(Debug)]
pub struct Place {
    places: std::sync::Arc<Places>,
    tenant: String,
    reserved: u64,
}

impl Places {
    /// Takes a place of `tenant` reserving `bytes`, unless it holds `max` already:
    /// then `Err` with the bytes its places reserved.
    fn take(
        self: &std::sync::Arc<Self>,
        tenant: &str,
        max: usize,
        bytes: impl FnOnce(u64) -> Result<u64, EngineError>,
    ) -> Result<Place, PlaceError> {
        let mut places = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (held, reserved) = places.get(tenant).copied().unwrap_or_default();
        if held >= max {
            return Err(PlaceError::Full);
        }
        let bytes = bytes(reserved).map_err(PlaceError::Refused)?;
        let entry = places.entry(tenant.to_string()).or_default();
        entry.0 += 1;
        entry.1 += bytes;
        Ok(Place {
            places: self.clone(),
            tenant: tenant.to_string(),
            reserved: bytes,
        })
    }
}

/// Why [`Places::take`] gave no place.
enum PlaceError {
    /// The tenant holds as many as it may.
    Full,
    /// The bytes were refused.
    Refused(EngineError),
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut places = self.places.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((held, bytes)) = places.get_mut(&self.tenant) {
            *held -= 1;
            *bytes -= self.reserved;
            if *held == 0 {
                places.remove(&self.tenant);
            }
        }
    }
}

/// One upload's place among its tenant's stagings, and what it may stage.
#[derive(Debug)]
pub struct StagingPermit {
    _place: Place,
    /// The most bytes this upload may stage: the store's blob limit, or less when
    /// the tenant's quota has less left.
    pub limit: u64,
    /// Whether `limit` is the quota's (passing it is `QuotaExceeded`, not too large).
    pub by_quota: bool,
}

/// Webhooks one tenant may have.
pub const MAX_WEBHOOKS: usize = 16;

/// Event streams one tenant may hold open at once (the change feed and queue
/// streams together).
pub const MAX_STREAMS: usize = 32;

/// One open stream of a tenant; its place comes back when it is dropped.
pub type StreamPermit = Place;

impl Engine {
    /// Whether no retry may follow an attempt of `tenant`'s that used `fuel`: why,
    /// when the tenant's `max_fuel_per_hour` is reached counting it. `seen` carries
    /// each tenant's hour across one batch of attempts (read once, then added to).
    pub(super) fn retry_refused(
        &self,
        tenant: &str,
        fuel: u64,
        seen: &mut HashMap<String, u64>,
    ) -> Result<Option<String>, EngineError> {
        let Some(limit) = self.config.quotas.of(tenant).max_fuel_per_hour else {
            return Ok(None);
        };
        let used = match seen.get(tenant) {
            Some(used) => *used,
            None => self.fuel_last_hour(tenant)?,
        };
        let used = used.saturating_add(fuel);
        seen.insert(tenant.to_string(), used);
        Ok((used >= limit).then(|| {
            format!(
                "not retried: quota max_fuel_per_hour is {limit} fuel; {used} consumed in the last hour"
            )
        }))
    }

    /// The fuel `tenant`'s attempts consumed in the last hour (the usage ledger's).
    fn fuel_last_hour(&self, tenant: &str) -> Result<u64, EngineError> {
        let hour_ago = crate::store::now_ms() - 3_600_000;
        Ok(self.store.tenant(tenant).fuel_since(hour_ago)?)
    }

    /// Admits one more webhook of `tenant`: `QuotaExceeded` past [`MAX_WEBHOOKS`] (each
    /// one's deliveries take the deliverer's slots and the journal's rows).
    pub fn admit_webhook(&self, tenant: &str) -> Result<(), EngineError> {
        let held = self.store.tenant(tenant).webhooks()?.len();
        if held >= MAX_WEBHOOKS {
            return Err(EngineError::QuotaExceeded(format!(
                "a tenant has at most {MAX_WEBHOOKS} webhooks; delete one first"
            )));
        }
        Ok(())
    }

    /// Admits one more event stream of `tenant`: 429 past [`MAX_STREAMS`].
    pub fn admit_stream(&self, tenant: &str) -> Result<StreamPermit, EngineError> {
        self.streams
            .take(tenant, MAX_STREAMS, |_| Ok(0))
            .map_err(|e| match e {
                PlaceError::Full => EngineError::RateLimited(
                    format!("{MAX_STREAMS} event streams of this tenant are open; close one first"),
                    std::time::Duration::from_secs(1),
                ),
                PlaceError::Refused(e) => e,
            })
    }

    /// Admits an upload of `tenant` before a byte of it is read: one of its
    /// [`MAX_STAGING`] places (429 past them), and, under `max_store_bytes`, the bytes
    /// it may stage: what the tenant has left less what its other uploads reserved. A
    /// `declared` length above that is refused now; an undeclared one reserves all of
    /// it. `blob` is false for a body staged only to be read again (a keyed request's
    /// spool), which reserves no quota.
    pub fn admit_staging(
        &self,
        tenant: &str,
        declared: Option<u64>,
        blob: bool,
    ) -> Result<StagingPermit, EngineError> {
        let max = self.cas.max_blob_bytes();
        let quota = self
            .config
            .quotas
            .of(tenant)
            .max_store_bytes
            .filter(|_| blob);
        let held = match quota {
            Some(_) => self.stored_bytes(tenant)?,
            None => 0,
        };
        let mut limits = (max, false);
        let place = self.staging.take(tenant, MAX_STAGING, |reserved| {
            let (limit, by_quota) = match quota {
                Some(quota) => {
                    let left = quota.saturating_sub(held).saturating_sub(reserved);
                    (left.min(max), left < max)
                }
                None => (max, false),
            };
            limits = (limit, by_quota);
            if let Some(len) = declared
                && len > limit
            {
                return Err(if by_quota {
                    EngineError::QuotaExceeded(format!(
                        "quota max_store_bytes is {} bytes; {held} held and {reserved} being uploaded, {len} more declared",
                        quota.unwrap_or_default()
                    ))
                } else {
                    EngineError::TooLarge(format!("blob larger than {max} bytes"))
                });
            }
            Ok(if quota.is_some() { declared.unwrap_or(limit) } else { 0 })
        });
        let place = place.map_err(|e| match e {
            PlaceError::Full => EngineError::RateLimited(
                format!(
                    "{MAX_STAGING} uploads of this tenant are in progress; retry when one ends"
                ),
                std::time::Duration::from_secs(1),
            ),
            PlaceError::Refused(e) => e,
        })?;
        Ok(StagingPermit {
            _place: place,
            limit: limits.0,
            by_quota: limits.1,
        })
    }

    /// The bytes `tenant` holds against `max_store_bytes`: its blobs and its
    /// recordings.
    pub fn stored_bytes(&self, tenant: &str) -> Result<u64, EngineError> {
        let blobs = self.store.tenant(tenant).held_bytes()?;
        Ok(blobs.saturating_add(self.recorder.bytes_of(tenant)))
    }

    /// What `tenant`'s `max_store_bytes` leaves (`None`: no quota).
    pub fn store_room(&self, tenant: &str) -> Result<Option<u64>, EngineError> {
        match self.config.quotas.of(tenant).max_store_bytes {
            Some(limit) => Ok(Some(limit.saturating_sub(self.stored_bytes(tenant)?))),
            None => Ok(None),
        }
    }

    /// Admits `jobs` new jobs of `tenant` (`max_queued`, `max_fuel_per_hour`, then the
    /// submit rate), all or none.
    pub(super) fn admit_jobs(&self, tenant: &str, jobs: u64) -> Result<(), EngineError> {
        let quota = self.config.quotas.of(tenant);
        if quota.max_queued.is_some() {
            // Sharing the journal, the tenant's jobs other coordinators took count too.
            let pending = if self.store.is_shared() {
                self.store.tenant(tenant).pending_jobs()?
            } else {
                self.scheduler().pending_of(tenant) as u64
            };
            Quota::check("max_queued", quota.max_queued, pending, jobs, "jobs")?;
        }
        if let Some(limit) = quota.max_fuel_per_hour {
            let used = self.fuel_last_hour(tenant)?;
            if used >= limit {
                return Err(EngineError::QuotaExceeded(format!(
                    "quota max_fuel_per_hour is {limit} fuel; {used} consumed in the last hour"
                )));
            }
        }
        self.limiter.take(tenant, &quota, jobs, Instant::now())
    }

    /// Admits blobs of `tenant` about to be stored (`max_store_bytes`): those it does
    /// not hold yet count, by their sizes.
    pub fn admit_blobs(&self, tenant: &str, blobs: &[(HashHex, u64)]) -> Result<(), EngineError> {
        let quota = self.config.quotas.of(tenant);
        if quota.max_store_bytes.is_none() {
            return Ok(());
        }
        let store = self.store.tenant(tenant);
        let mut adding = 0u64;
        for (hash, size) in blobs {
            if !store.owns_blob(hash)? {
                adding = adding.saturating_add(*size);
            }
        }
        let held = self.stored_bytes(tenant)?;
        Quota::check(
            "max_store_bytes",
            quota.max_store_bytes,
            held,
            adding,
            "bytes",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_s_own_quotas_fall_back_to_the_defaults_field_by_field() {
        let defaults = Quota {
            max_queued: Some(10),
            submit_rate: Some(5.0),
            ..Quota::default()
        };
        let own = Quota {
            max_queued: Some(2),
            ..Quota::default()
        };
        let quotas = Quotas::new(defaults.clone(), HashMap::from([("a".into(), own)]));
        let a = quotas.of("a");
        assert_eq!((a.max_queued, a.submit_rate), (Some(2), Some(5.0)));
        assert_eq!(quotas.of("b"), defaults);
        assert_eq!(Quotas::default().of("a"), Quota::default());
    }

    #[test]
    fn hard_caps_name_the_quota_its_limit_and_the_use() {
        assert!(Quota::check("max_queued", None, 100, 100, "jobs").is_ok());
        assert!(Quota::check("max_queued", Some(3), 1, 2, "jobs").is_ok());
        let refused = Quota::check("max_queued", Some(3), 2, 2, "jobs").unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains("max_queued") && message.contains('3') && message.contains('2'),
            "{message}"
        );
    }

    #[test]
    fn the_rate_limit_is_a_bucket_refilled_with_time() {
        let limiter = RateLimiter::default();
        let quota = Quota {
            submit_rate: Some(2.0),
            submit_burst: Some(4),
            ..Quota::default()
        };
        let t0 = Instant::now();
        limiter.take("a", &quota, 3, t0).unwrap();
        limiter.take("a", &quota, 1, t0).unwrap();
        let Err(EngineError::RateLimited(_, wait)) = limiter.take("a", &quota, 2, t0) else {
            panic!("the bucket is empty");
        };
        assert_eq!(wait, Duration::from_secs(1), "two jobs at two a second");
        // Another tenant has its own bucket.
        limiter.take("b", &quota, 4, t0).unwrap();
        // Half a second refills one token: one job, not two.
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.take("a", &quota, 2, later).is_err());
        limiter.take("a", &quota, 1, later).unwrap();
        // A batch larger than the bucket never fits: a hard refusal.
        assert!(matches!(
            limiter.take("a", &quota, 5, later + Duration::from_secs(60)),
            Err(EngineError::QuotaExceeded(_))
        ));
        // No rate, no limit.
        limiter
            .take("a", &Quota::default(), 1_000_000, later)
            .unwrap();
    }
}
