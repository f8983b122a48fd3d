//! Usage accounting's wire types: the rows of `GET /compute/usage`, how they group,
//! and the price list that turns them into cost.

use serde::{Deserialize, Serialize};

use super::HashHex;

/// What a tenant's finished jobs consumed, summed by the grouping asked for
/// (`GET /compute/usage`). Cache answers consume nothing and are not counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The tenant.
    pub tenant: String,
    /// The worker (`by=worker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<HashHex>,
    /// The queue (`by=queue`; `null` groups the jobs outside any queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<Option<u64>>,
    /// Jobs with an attempt that ended in the period.
    pub jobs: u64,
    /// Attempts that ended in the period (retries are billed too).
    #[serde(default)]
    pub attempts: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// Wall time in milliseconds.
    pub wall_ms: u64,
    /// Memory-time in byte-seconds.
    pub memory_byte_seconds: u64,
    /// Storage-time of the blobs the tenant held, in byte-seconds (`by=tenant` only:
    /// storage belongs to no worker or queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_byte_seconds: Option<u64>,
    /// What it costs by the server's price list (when one is configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
}

/// A price list (`--prices FILE`): what a unit of each resource costs, in one
/// currency. Every price is optional (0).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// The currency's name, shown with costs (default `"credits"`).
    #[serde(default)]
    pub currency: Option<String>,
    /// Per unit of fuel.
    #[serde(default)]
    pub fuel: f64,
    /// Per second of wall time.
    #[serde(default)]
    pub wall_second: f64,
    /// Per GiB-second of memory-time.
    #[serde(default)]
    pub memory_gib_second: f64,
    /// Per GiB-hour of stored blobs.
    #[serde(default)]
    pub stored_gib_hour: f64,
}

/// Usage turned into cost by a price list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// The price list's currency.
    pub currency: String,
    /// Of the fuel.
    pub fuel: f64,
    /// Of the wall time.
    pub wall: f64,
    /// Of the memory-time.
    pub memory: f64,
    /// Of the storage-time.
    pub storage: f64,
    /// Their sum.
    pub total: f64,
}

impl Prices {
    /// Refuses prices no list can mean (negative or not finite).
    pub fn validate(&self) -> Result<(), String> {
        for (name, price) in [
            ("fuel", self.fuel),
            ("wall_second", self.wall_second),
            ("memory_gib_second", self.memory_gib_second),
            ("stored_gib_hour", self.stored_gib_hour),
        ] {
            if !(price.is_finite() && price >= 0.0) {
                return Err(format!("{name} is {price}; a price is a number from 0"));
            }
        }
        Ok(())
    }

    /// What `row`'s usage costs.
    pub fn cost(&self, row: &UsageRow) -> Cost {
        const GIB: f64 = (1u64 << 30) as f64;
        let fuel = row.fuel as f64 * self.fuel;
        let wall = row.wall_ms as f64 / 1000.0 * self.wall_second;
        let memory = row.memory_byte_seconds as f64 / GIB * self.memory_gib_second;
        let storage =
            row.stored_byte_seconds.unwrap_or(0) as f64 / GIB / 3600.0 * self.stored_gib_hour;
        Cost {
            currency: self.currency.clone().unwrap_or_else(|| "credits".into()),
            fuel,
            wall,
            memory,
            storage,
            total: fuel + wall + memory + storage,
        }
    }
}

/// How `GET /compute/usage` groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageBy {
    /// One row per tenant.
    #[default]
    Tenant,
    /// One row per (tenant, worker).
    Worker,
    /// One row per (tenant, queue).
    Queue,
}
