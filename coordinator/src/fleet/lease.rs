//! What a lease says: the run's settings that every lease carries, and the one mapping
//! from leased work to the `alldocs.v1.Lease` a fetcher receives.

use std::time::Duration;

use alldocs_proto::v1::{
    lease::Work as LeaseWork, Accept, IndexWork, Layout as ProtoLayout, Lease, PackumentRequest,
    PackumentWork,
};

use crate::{
    checkpoint::{Layout, Work},
    fleet::budget::Pace,
};

/// How leases are cut and paced.
#[derive(Clone, Debug)]
pub struct Settings {
    pub replicate_origin: String,
    pub registry: String,
    pub store: String,
    pub accept: Accept,
    pub page_size: u32,
    pub lease_size: usize,
    pub lease_duration: Duration,
    /// How long past a lease's deadline the coordinator waits for the fetcher to say it
    /// stopped, before it gives the work back without an answer.
    pub answer_grace: Duration,
    pub max_in_flight: usize,
    pub concurrency: u32,
    /// Requests per second to the origins, all leases together (0 = unlimited).
    pub rate_limit: f64,
    /// After the origin throttled, how often the rate climbs back by a tenth of the limit.
    pub rate_recovery: Duration,
    pub max_retries: u32,
    pub retry_base_ms: u32,
    /// Decoded bytes one packument may have (0 = the fetcher's default, 256 MiB).
    pub max_document_bytes: u64,
    /// How packuments are stored, and with packs, the snapshot's id and when a pack is
    /// sealed.
    pub layout: Layout,
    pub snapshot_id: String,
    pub pack_bytes: u64,
    pub pack_interval: Duration,
}

impl Settings {
    /// The lease a fetcher receives for `work`, fenced by `token`, paced by `pace`.
    pub fn lease(&self, token: i64, work: &Work, deadline_unix_ms: i64, pace: Pace) -> Lease {
        Lease {
            lease_id: format!("lease-{token}"),
            fencing_token: token as u64,
            deadline_unix_ms,
            replicate_origin: self.replicate_origin.clone(),
            registry: self.registry.clone(),
            store_url: self.store.clone(),
            accept: self.accept as i32,
            rate_limit: pace.rate,
            rate_grid_period_us: pace.period_us,
            rate_grid_phase_us: pace.phase_us,
            rate_grid_slot: pace.slot,
            concurrency: self.concurrency,
            max_retries: self.max_retries,
            retry_base_ms: self.retry_base_ms,
            max_document_bytes: self.max_document_bytes,
            layout: match self.layout {
                Layout::Packs => ProtoLayout::Packs,
                Layout::Files => ProtoLayout::Files,
            } as i32,
            pack_bytes: self.pack_bytes,
            pack_interval_ms: self.pack_interval.as_millis().min(u128::from(u32::MAX)) as u32,
            snapshot_id: self.snapshot_id.clone(),
            work: Some(self.lease_work(work)),
        }
    }

    fn lease_work(&self, work: &Work) -> LeaseWork {
        match work {
            Work::Index(p) => LeaseWork::Index(IndexWork {
                partition: p.name.clone(),
                start: p.start.clone(),
                end: p.end.clone(),
                page_size: self.page_size,
            }),
            Work::Packuments(items) => LeaseWork::Packuments(PackumentWork {
                items: items
                    .iter()
                    .map(|(name, rev)| PackumentRequest {
                        name: name.clone(),
                        rev: rev.clone(),
                    })
                    .collect(),
            }),
        }
    }
}
