//! A Google Cloud Storage emulator on loopback for tests (`gcp-storage-emulator`, from PyPI,
//! run by `tests/py/gcs_emulator.py`, which adds the XML API calls `object_store` makes),
//! and an independent look at what it holds through the emulator's own JSON API.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::{
    procs::Listening,
    py::{py_dir, python_env},
};

/// The emulator, killed when dropped.
pub struct GcsServer {
    _process: Listening,
    pub url: String,
}

/// One object as the JSON API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GcsObject {
    pub name: String,
    #[serde(deserialize_with = "number_in_a_string")]
    pub size: u64,
    /// Changes each time the object is written.
    pub generation: String,
}

/// What the emulator's XML layer counted (`GET /_alldocs/stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct GcsStats {
    /// Whole-object PUTs.
    pub puts: u64,
    pub multipart_completed: u64,
    pub multipart_aborted: u64,
    /// Multipart uploads begun and neither completed nor aborted.
    pub multipart_pending: u64,
}

fn number_in_a_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl GcsServer {
    /// Starts it on a free loopback port and waits until it accepts connections.
    pub fn start() -> Result<Self> {
        let python = python_env()?;
        let script = py_dir().join("gcs_emulator.py");
        let process = Listening::start(
            &python,
            &[
                script.to_string_lossy().into_owned(),
                "--host".into(),
                "127.0.0.1".into(),
            ],
            &[("PYTHONDONTWRITEBYTECODE", "1")],
        )
        .context("starting tests/py/gcs_emulator.py")?;
        let url = process.url();
        Ok(Self {
            _process: process,
            url,
        })
    }

    /// The service account key `object_store` reads from `GOOGLE_SERVICE_ACCOUNT_KEY`: its
    /// `gcs_base_url` points the GCS client at this server, `disable_oauth` sends no token.
    pub fn service_account_key(&self) -> String {
        serde_json::json!({
            "gcs_base_url": self.url,
            "disable_oauth": true,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        })
        .to_string()
    }

    /// The environment a `coordinator` or `fetcher` needs to use this server for gs://.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("GOOGLE_SERVICE_ACCOUNT_KEY", self.service_account_key())]
    }

    /// Creates a bucket (JSON API).
    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let created = reqwest::Client::new()
            .post(format!("{}/storage/v1/b", self.url))
            .json(&serde_json::json!({ "name": bucket }))
            .send()
            .await?;
        if !created.status().is_success() {
            bail!("creating bucket {bucket}: {}", created.status());
        }
        Ok(())
    }

    /// Every object under `prefix`, by name (JSON API `objects.list`).
    pub async fn objects(&self, bucket: &str, prefix: &str) -> Result<BTreeMap<String, GcsObject>> {
        #[derive(Deserialize)]
        struct Listing {
            #[serde(default)]
            items: Vec<GcsObject>,
        }
        let listing: Listing = reqwest::Client::new()
            .get(format!("{}/storage/v1/b/{bucket}/o", self.url))
            .query(&[("prefix", prefix)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
            .context("objects.list answered something else than a listing")?;
        Ok(listing
            .items
            .into_iter()
            .map(|o| (o.name.clone(), o))
            .collect())
    }

    /// The bytes of one object (JSON API media download).
    pub async fn download(&self, bucket: &str, name: &str) -> Result<Bytes> {
        let name = utf8_percent_encode(name, NON_ALPHANUMERIC);
        let response = reqwest::Client::new()
            .get(format!(
                "{}/download/storage/v1/b/{bucket}/o/{name}?alt=media",
                self.url
            ))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("downloading {bucket}/{name}: {}", response.status());
        }
        Ok(response.bytes().await?)
    }

    /// What the XML layer counted so far.
    pub async fn stats(&self) -> Result<GcsStats> {
        Ok(reqwest::get(format!("{}/_alldocs/stats", self.url))
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}
