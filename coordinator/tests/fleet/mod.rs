//! Shared by the fleet tests: a real fetcher (the `alldocs_fetcher` service) on loopback
//! behind a gate that records every call's credentials and connection and checks the
//! bearer token itself; a fake GCE metadata server; a fake OAuth token endpoint that
//! verifies service-account JWTs; and the coordinator binary run to its end.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use alldocs_fetcher::{source::npmrc::Credentials, FetchService};
use alldocs_proto::v1::fetcher_server::FetcherServer;
use alldocs_tests::loopback::serve_http;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request as HttpRequest, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Status};

pub fn coordinator() -> PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT-shaped token (unsigned) with this payload.
pub fn fake_jwt(payload: &serde_json::Value) -> String {
    format!(
        "{}.{}.{}",
        b64(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64(payload.to_string().as_bytes()),
        b64(b"not-a-real-signature")
    )
}

/// The payload of a JWT-shaped token, if it is one.
pub fn payload(token: &str) -> Option<serde_json::Value> {
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What the gate demands of a call's `authorization` header.
#[derive(Clone, Debug)]
pub enum Check {
    /// Nothing.
    Open,
    /// `Bearer <token>` exactly.
    Token(String),
    /// `Bearer <JWT>` whose `aud` is this fetcher's own URL (`http://127.0.0.1:PORT`) and
    /// whose `exp` is in the future.
    IdToken,
}

/// How the gate answers, beyond the credential check.
#[derive(Clone, Debug)]
pub struct Gate {
    pub check: Check,
    /// The first this-many calls whose credential passed are refused `UNAUTHENTICATED`
    /// all the same (a token the platform no longer accepts).
    pub reject_first: usize,
    /// The first this-many calls are answered `UNAVAILABLE` with a 50 ms retry hint (a
    /// saturated service).
    pub unavailable_first: usize,
    /// Then the next this-many calls are answered `RESOURCE_EXHAUSTED` with
    /// `retry-after: 1` (seconds).
    pub exhausted_first: usize,
    /// Every call that passed is answered with this instead (an allow-list refusal).
    pub deny: Option<(Code, String)>,
}

impl Gate {
    pub fn open() -> Self {
        Self {
            check: Check::Open,
            reject_first: 0,
            unavailable_first: 0,
            exhausted_first: 0,
            deny: None,
        }
    }
    pub fn check(check: Check) -> Self {
        Self {
            check,
            ..Self::open()
        }
    }
}

/// One `Fetch` call as the gate saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub authorization: Option<String>,
    pub peer: Option<SocketAddr>,
    /// When it arrived.
    pub at: std::time::Instant,
    /// Whether the credential passed the gate's [`Check`].
    pub credential_ok: bool,
    /// The gate's answer: `None` when the call went through to the fetcher.
    pub refused: Option<Code>,
}

/// The real fetcher service on `127.0.0.1:<free port>`, behind a [`Gate`].
pub struct GuardedFetcher {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GuardedFetcher {
    pub async fn start(gate: Gate) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let seen = calls.clone();
        let own = format!("http://{addr}");
        let interceptor = move |request: Request<()>| judge(&gate, &own, &seen, request);
        let service =
            FetcherServer::with_interceptor(FetchService::new(Credentials::new()), interceptor);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Self { addr, calls, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for GuardedFetcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The gate's decision on one call, recorded.
fn judge(
    gate: &Gate,
    own: &str,
    calls: &Mutex<Vec<Call>>,
    request: Request<()>,
) -> Result<Request<()>, Status> {
    let authorization = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut calls = calls.lock().unwrap();
    let passed_before = calls.iter().filter(|c| c.credential_ok).count();
    let ok = credential_ok(&gate.check, own, authorization.as_deref());
    let verdict = if !ok {
        Err(Status::unauthenticated("missing or wrong bearer token"))
    } else if calls.len() < gate.unavailable_first {
        let mut status = Status::unavailable("saturated (scripted)");
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "50".parse().unwrap());
        Err(status)
    } else if calls.len() < gate.unavailable_first + gate.exhausted_first {
        let mut status = Status::resource_exhausted("quota exceeded (scripted)");
        status
            .metadata_mut()
            .insert("retry-after", "1".parse().unwrap());
        Err(status)
    } else if passed_before < gate.reject_first {
        Err(Status::unauthenticated(
            "token no longer accepted (scripted)",
        ))
    } else if let Some((code, message)) = &gate.deny {
        Err(Status::new(*code, message.clone()))
    } else {
        Ok(())
    };
    calls.push(Call {
        authorization,
        peer: request.remote_addr(),
        at: std::time::Instant::now(),
        credential_ok: ok,
        refused: verdict.as_ref().err().map(Status::code),
    });
    verdict.map(|()| request)
}

fn credential_ok(check: &Check, own: &str, authorization: Option<&str>) -> bool {
    let bearer = authorization.and_then(|a| a.strip_prefix("Bearer "));
    match (check, bearer) {
        (Check::Open, _) => true,
        (Check::Token(t), Some(b)) => t == b,
        (Check::IdToken, Some(b)) => payload(b)
            .is_some_and(|p| p["aud"] == own && p["exp"].as_u64().is_some_and(|e| e > unix_now())),
        _ => false,
    }
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// One request to the fake metadata server.
#[derive(Clone, Debug)]
pub struct MetaRequest {
    pub flavor: bool,
    pub audience: Option<String>,
    pub format: Option<String>,
    /// The token it was given (none when refused).
    pub token: Option<String>,
}

/// A fake GCE metadata server: `…/service-accounts/default/identity?audience=A` answers a
/// JWT-shaped token for A whose `exp` is `lifetimes[i]` seconds away (the last repeats),
/// and only with `Metadata-Flavor: Google`.
pub struct FakeMetadata {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<MetaRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeMetadata {
    pub async fn start(lifetimes: Vec<u64>) -> anyhow::Result<Self> {
        let requests: Arc<Mutex<Vec<MetaRequest>>> = Arc::default();
        let seen = requests.clone();
        let lifetimes = Arc::new(lifetimes);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = serve_http(listener, move |req| {
            let (seen, lifetimes) = (seen.clone(), lifetimes.clone());
            async move { identity(&req, &seen, &lifetimes) }
        });
        Ok(Self {
            addr,
            requests,
            task,
        })
    }

    /// `127.0.0.1:PORT`, as `GCE_METADATA_HOST` takes it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<MetaRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeMetadata {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn identity<B>(
    req: &HttpRequest<B>,
    seen: &Mutex<Vec<MetaRequest>>,
    lifetimes: &[u64],
) -> Response<Body> {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let flavor = req
        .headers()
        .get("metadata-flavor")
        .is_some_and(|v| v == "Google");
    let mut seen = seen.lock().unwrap();
    let mut record = MetaRequest {
        flavor,
        audience: get("audience"),
        format: get("format"),
        token: None,
    };
    let path_ok =
        req.uri().path() == "/computeMetadata/v1/instance/service-accounts/default/identity";
    let response = match (&record.audience, flavor, path_ok) {
        (_, false, _) => reply(
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.",
        ),
        (_, _, false) => reply(StatusCode::NOT_FOUND, "not found"),
        (None, _, _) => reply(
            StatusCode::BAD_REQUEST,
            "non-empty audience parameter required",
        ),
        (Some(audience), true, true) => {
            let n = seen.iter().filter(|r| r.token.is_some()).count();
            let lifetime = lifetimes[n.min(lifetimes.len() - 1)];
            let token = fake_jwt(&serde_json::json!({
                "aud": audience, "exp": unix_now() + lifetime, "iss": "https://accounts.google.com", "n": n,
            }));
            record.token = Some(token.clone());
            reply(StatusCode::OK, token)
        }
    };
    seen.push(record);
    response
}

/// One assertion the fake token endpoint received, after verifying it.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// `Ok(target_audience)` when the signature, `aud`, `iss` and grant type held.
    pub verdict: Result<String, String>,
    pub id_token: Option<String>,
}

/// A fake OAuth token endpoint for service-account keys: verifies the JWT assertion's RS256
/// signature with the key's public half, its `aud` (this endpoint) and `iss`, and answers
/// an `id_token` for its `target_audience`.
pub struct FakeTokenEndpoint {
    pub addr: SocketAddr,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeTokenEndpoint {
    pub async fn start(public_pem: Vec<u8>, email: String) -> anyhow::Result<Self> {
        let exchanges: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let seen = exchanges.clone();
        let key = Arc::new(jsonwebtoken::DecodingKey::from_rsa_pem(&public_pem)?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token_uri = Arc::new(format!("http://{addr}/token"));
        let task = serve_http(listener, move |req: HttpRequest<hyper::body::Incoming>| {
            let (seen, key, email) = (seen.clone(), key.clone(), email.clone());
            let token_uri = token_uri.clone();
            async move {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let verdict = verify(&body, &key, &email, &token_uri);
                let id_token = verdict.as_ref().ok().map(|aud| {
                    fake_jwt(
                        &serde_json::json!({"aud": aud, "exp": unix_now() + 3600, "email": email}),
                    )
                });
                let response = match &id_token {
                    Some(t) => reply(
                        StatusCode::OK,
                        serde_json::json!({"id_token": t}).to_string(),
                    ),
                    None => reply(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#),
                };
                seen.lock().unwrap().push(Exchange { verdict, id_token });
                response
            }
        });
        Ok(Self {
            addr,
            exchanges,
            task,
        })
    }

    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.exchanges.lock().unwrap().clone()
    }
}

impl Drop for FakeTokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks a form `grant_type=…&assertion=JWT`; returns the JWT's `target_audience`.
fn verify(
    form: &[u8],
    key: &jsonwebtoken::DecodingKey,
    email: &str,
    token_uri: &str,
) -> Result<String, String> {
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(form).into_owned().collect();
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    if get("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return Err(format!("grant_type {:?}", get("grant_type")));
    }
    let assertion = get("assertion").ok_or("no assertion")?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[token_uri]);
    validation.set_issuer(&[email]);
    let data = jsonwebtoken::decode::<serde_json::Value>(assertion, key, &validation)
        .map_err(|e| e.to_string())?;
    data.claims["target_audience"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "no target_audience".to_string())
}

/// A fresh 2048-bit RSA key from `openssl`: (PKCS#8 private PEM, public PEM).
pub fn rsa_key(dir: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let private = dir.join("key.pem");
    let run = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let out = std::process::Command::new("openssl").args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    };
    let path = private.to_str().unwrap();
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        path,
    ])?;
    let public = run(&["pkey", "-in", path, "-pubout"])?;
    Ok((std::fs::read_to_string(&private)?, public))
}

/// The outcome of a coordinator run: exit code, stdout, stderr.
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Both streams, for messages and for scanning.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the coordinator to its end off the runtime's workers (the fakes run on them).
pub async fn run_coordinator(
    args: Vec<String>,
    envs: Vec<(String, String)>,
) -> anyhow::Result<Outcome> {
    tokio::task::spawn_blocking(move || {
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (code, stdout, stderr) = alldocs_tests::procs::run(&coordinator(), &args, &envs)?;
        Ok(Outcome {
            code,
            stdout,
            stderr,
        })
    })
    .await?
}

/// `(key, value)` pairs as owned strings.
pub fn envs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `(status, attempts)` of every package and partition in a checkpoint.
pub fn attempts(db: &Path) -> Vec<(String, String, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut out = Vec::new();
    for table in ["partitions", "packages"] {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT name, status, attempts FROM {table} ORDER BY name"
            ))
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}
