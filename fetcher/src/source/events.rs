//! The sending half of a lease's event stream: a bounded channel whose closing means the
//! client went away.

use alldocs_proto::v1::{
    fetch_event::Event, FetchEvent, IndexDone, IndexRows, ItemFailed, LeaseSummary, PackSealed,
    PackumentMissing, PackumentStored, Throttled,
};
use tokio::sync::mpsc;
use tonic::Status;

/// Where a lease's events go.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<Result<FetchEvent, Status>>,
}

impl EventSink {
    pub fn new(tx: mpsc::Sender<Result<FetchEvent, Status>>) -> Self {
        Self { tx }
    }

    /// Sends one event, waiting while the channel is full. Fails when the client is gone.
    pub async fn send(&self, event: Event) -> Result<(), ClientGone> {
        self.tx
            .send(Ok(FetchEvent { event: Some(event) }))
            .await
            .map_err(|_| ClientGone)
    }

    /// Resolves when the receiving side has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    pub async fn index_rows(&self, rows: IndexRows) -> Result<(), ClientGone> {
        self.send(Event::IndexRows(rows)).await
    }
    pub async fn index_done(&self, done: IndexDone) -> Result<(), ClientGone> {
        self.send(Event::IndexDone(done)).await
    }
    pub async fn pack_sealed(&self, pack: PackSealed) -> Result<(), ClientGone> {
        self.send(Event::PackSealed(pack)).await
    }
    pub async fn stored(&self, stored: PackumentStored) -> Result<(), ClientGone> {
        self.send(Event::Stored(stored)).await
    }
    pub async fn missing(&self, missing: PackumentMissing) -> Result<(), ClientGone> {
        self.send(Event::Missing(missing)).await
    }
    pub async fn failed(&self, failed: ItemFailed) -> Result<(), ClientGone> {
        self.send(Event::Failed(failed)).await
    }
    /// Tells the coordinator the origin throttles, without waiting: a report that does not
    /// fit in a full channel is dropped (later ones carry the news).
    pub fn try_throttled(&self, http_status: u32, retry_after: std::time::Duration) {
        let event = Event::Throttled(Throttled {
            http_status,
            retry_after_ms: retry_after.as_millis() as u64,
        });
        let _ = self.tx.try_send(Ok(FetchEvent { event: Some(event) }));
    }
    pub async fn summary(&self, summary: LeaseSummary) -> Result<(), ClientGone> {
        self.send(Event::Summary(summary)).await
    }
}

/// The client closed the stream.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client went away")]
pub struct ClientGone;
