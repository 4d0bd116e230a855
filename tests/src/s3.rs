//! An S3-compatible server on loopback for tests (`moto_server`, from PyPI), and an
//! independent look at what it holds through boto3.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{
    procs::{args, free_port, run},
    py::{python_env, venv_tool},
};

/// A `moto_server` on a free loopback port, killed when dropped.
pub struct S3Server {
    child: Child,
    pub url: String,
}

impl S3Server {
    /// Starts it and waits until it accepts connections.
    pub fn start() -> Result<Self> {
        let bin = venv_tool("moto_server")?;
        let port = free_port()?;
        let mut child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting moto_server")?;
        // It says where it listens on stderr once it accepts connections.
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("Running on"));
        std::thread::spawn(move || lines.for_each(drop));
        if !ready {
            let _ = child.kill();
            bail!("moto_server exited before it listened");
        }
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// The environment `object_store` reads to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.url.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let created = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.url))
            .send()
            .await?;
        if !created.status().is_success() {
            bail!("creating bucket {bucket}: {}", created.status());
        }
        Ok(())
    }

    /// Multipart uploads in progress and objects under `prefix`, as boto3 lists them.
    pub fn uploads_and_objects(&self, bucket: &str, prefix: &str) -> Result<(usize, usize)> {
        const COUNT: &str = r#"
import sys, boto3
endpoint, bucket, prefix = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
objects = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
print(len(uploads), len(objects))
"#;
        let (code, out, err) = run(
            &python_env()?,
            &args(&["-c", COUNT, &self.url, bucket, prefix]),
            &[],
        )?;
        if code != 0 {
            bail!("listing {bucket}/{prefix}: {err}");
        }
        let mut counts = out.split_whitespace().map(str::parse::<usize>);
        match (counts.next(), counts.next()) {
            (Some(Ok(u)), Some(Ok(o))) => Ok((u, o)),
            _ => bail!("unexpected listing output {out:?}"),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
