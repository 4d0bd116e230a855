//! The fetcher's Cloud Run image (`deploy/cloudrun/Dockerfile`), built by `build-local.sh`
//! with this crate's `fetcher` and run with podman as Cloud Run runs it: `$PORT`, h2c gRPC,
//! a non-root user, the image's CA roots, no start when exposed without auth, leases from a
//! coordinator on the host, and SIGTERM from `podman stop`.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use alldocs_coordinator::{
    cli::{exit_code, Cli, Command as CoordinatorCommand},
    run::args::JobArgs,
};
use alldocs_proto::v1::{fetch_event::Event, fetcher_client::FetcherClient};
use alldocs_tests::{
    coord::{checkpoint_statuses, job_args, pack_files, stored_files, wait_until},
    procs::{free_port, Listening},
    py::{python_env, reflect_call, reflect_list},
    sim::{SimConfig, SimServer},
    support::{fetch_all, packument_lease},
};
use anyhow::{ensure, Context, Result};
use clap::Parser;
use tokio::sync::oneshot;
use tokio_rustls::rustls;

/// The image's user (the Dockerfile's `USER`).
const UID: u32 = 10001;
/// The tag the tests build; containers run the image by the id the build printed, so another
/// build of the tag meanwhile changes nothing here.
const TAG: &str = "localhost/alldocs-fetcher:test";
const INSTALL: &str = "The image tests build and run the fetcher's image: they need root, \
     podman, runc and debootstrap (`.ci/run` installs them; on Debian or Ubuntu, as root: \
     apt-get install -y --no-install-recommends podman runc buildah debootstrap uidmap \
     fuse-overlayfs).";

/// `podman` with the OCI runtime that works on machines of this kind (cgroup v1 hybrid).
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--runtime=runc").stdin(Stdio::null());
    cmd
}

/// Runs `podman args…`; its stdout, or an error with its stderr.
fn podman_ok(args: &[&str]) -> Result<String> {
    let out = podman()
        .args(args)
        .output()
        .with_context(|| format!("podman {args:?}. {INSTALL}"))?;
    ensure!(
        out.status.success(),
        "podman {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The image's id, built once per test process by `build-local.sh` with this crate's binary.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cloudrun/build-local.sh");
        let out = Command::new(&script)
            .args(["--binary", env!("CARGO_BIN_EXE_fetcher"), "--tag", TAG])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed ({}):\n{}\n{INSTALL}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // "built TAG (image ID, N MB)": shown in the test log, past the output capture.
        let last = stdout.lines().last().unwrap_or_default().to_string();
        let _ = writeln!(std::io::stderr().lock(), "image test: {last}");
        let id = last
            .split("(image ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("no image id in {last:?}"));
        id.to_string()
    })
}

/// A `fetcher serve` container on the host's network, as Cloud Run starts it: `$PORT` set,
/// no `--listen`. Removed when dropped.
struct Container {
    name: String,
    port: u16,
    process: Option<Listening>,
}

impl Container {
    fn serve(image: &str, envs: &[(&str, &str)], extra: &[&str]) -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let port = free_port()?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("alldocs-test-{}-{seq}", std::process::id());
        let mut args = vec!["--runtime=runc".to_string()];
        args.extend(podman_run_args(&name));
        for (k, v) in [("PORT", port.to_string().as_str())].iter().chain(envs) {
            args.extend(["-e".to_string(), format!("{k}={v}")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(image.to_string());
        let process = Listening::start(Path::new("podman"), &args, &[])?;
        ensure!(
            process.addr == format!("0.0.0.0:{port}"),
            "the fetcher listens on {}, not 0.0.0.0:$PORT",
            process.addr
        );
        Ok(Self {
            name,
            port,
            process: Some(process),
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The container's main process as the host sees it.
    fn host_pid(&self) -> Result<u32> {
        Ok(podman_ok(&["inspect", "--format", "{{.State.Pid}}", &self.name])?.parse()?)
    }

    /// `podman stop -t SECS`: how long it took, and the container's exit code.
    fn stop(mut self, secs: u32) -> Result<(Duration, i32)> {
        let started = Instant::now();
        podman_ok(&["stop", "-t", &secs.to_string(), &self.name])?;
        let took = started.elapsed();
        let process = self.process.take().context("stopped twice")?;
        Ok((took, process.wait()?.0))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}

/// `podman run` as this machine allows (after `podman()`'s runtime): rlimits it can grant,
/// the host's network (so the container reaches the test's loopback servers and the test
/// its `$PORT`), quiet logs; named `name` for later `podman` commands.
fn podman_run_args(name: &str) -> Vec<String> {
    [
        "run",
        "--rm",
        "--name",
        name,
        "--network=host",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
        "-e",
        "RUST_LOG=warn",
    ]
    .map(String::from)
    .to_vec()
}

/// A directory the container's user can write, bind-mounted at the same path (so the
/// coordinator on the host checks the very directory the fetcher writes to).
struct SharedDir {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SharedDir {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_path_buf();
        std::fs::create_dir(path.join("data"))?;
        for p in [path.clone(), path.join("data")] {
            std::os::unix::fs::chown(&p, Some(UID), Some(UID))?;
        }
        Ok(Self { _dir: dir, path })
    }

    /// The fetcher's options for it: mounted, and allowed as a store.
    fn container_options(&self) -> Vec<String> {
        let p = self.path.display();
        vec!["-v".into(), format!("{p}:{p}")]
    }

    fn store_url(&self) -> String {
        format!("file://{}/data", self.path.display())
    }

    fn allow(&self) -> String {
        format!("file://{}", self.path.display())
    }
}

/// The options of `coordinator <argv…>`, parsed as the binary parses them.
fn parse(argv: &[String]) -> JobArgs {
    let cli = Cli::try_parse_from(std::iter::once("coordinator".to_string()).chain(argv.to_vec()))
        .expect("valid options");
    match cli.command {
        CoordinatorCommand::Run(a) | CoordinatorCommand::Serve(a) => a,
        _ => panic!("not a job"),
    }
}

/// Runs blocking work (podman, the Python client) off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// A fetcher container started as on Cloud Run with platform auth (Cloud Run's IAM check)
/// standing in for a token, allowed to write to `dir` and to read `origin`.
fn platform_container(image: &str, dir: &SharedDir, origin: &str) -> Result<Container> {
    let allow = dir.allow();
    let mount = dir.container_options();
    let extra: Vec<&str> = mount.iter().map(String::as_str).collect();
    Container::serve(
        image,
        &[
            ("ALLDOCS_TRUST_PLATFORM_AUTH", "1"),
            ("ALLDOCS_ALLOW_STORE", &allow),
            ("ALLDOCS_ALLOW_ORIGIN", origin),
        ],
        &extra,
    )
}

/// Cloud Run's view of a started container: gRPC health and reflection answer over h2c on
/// `$PORT` (checked by an independent client, grpcio), and the process is not root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_answers_health_and_reflection_on_port_as_a_non_root_user() -> Result<()> {
    let dir = SharedDir::new()?;
    let container =
        blocking(move || platform_container(image(), &dir, "http://127.0.0.1:9")).await?;
    let addr = format!("127.0.0.1:{}", container.port);
    blocking(move || {
        python_env()?;
        for version in ["v1", "v1alpha"] {
            let services = reflect_list(&addr, version)?;
            ensure!(
                services.iter().any(|s| s == "alldocs.v1.Fetcher"),
                "reflection {version} lists {services:?}"
            );
            let health = reflect_call(&addr, "grpc.health.v1.Health/Check", "{}", version)?;
            ensure!(health["status"] == "SERVING", "health: {health}");
        }
        Ok(())
    })
    .await?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", container.host_pid()?))?;
    for field in ["Uid:", "Gid:"] {
        let ids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .context("no such line in /proc/PID/status")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        assert_eq!(ids, vec![UID; 4], "{field} of the fetcher in the container");
    }
    let comm = status.lines().next().unwrap_or_default();
    assert_eq!(
        comm, "Name:\tfetcher",
        "the entrypoint is the fetcher itself"
    );
    Ok(())
}

/// Exposed on `$PORT` with neither `ALLDOCS_FETCHER_TOKEN` nor platform auth, the fetcher
/// refuses to start (exit 2, naming both), rather than fetch for anyone who finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_refuses_to_start_exposed_without_auth() -> Result<()> {
    let image = blocking(|| Ok(image())).await?;
    let name = format!("alldocs-test-{}-refused", std::process::id());
    let port = free_port()?;
    let mut args = podman_run_args(&name);
    args.extend(["-e".into(), format!("PORT={port}"), image.into()]);
    let mut child = tokio::process::Command::new("podman")
        .arg("--runtime=runc")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // Either it exits (its stdout ends) or it says where it listens.
    let stdout = child.stdout.take().context("piped")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
    let started = !matches!(first, Ok(Ok(None)));
    if started {
        let _ = blocking(move || podman_ok(&["rm", "--force", "--time", "0", &name])).await;
    }
    let out = child.wait_with_output().await?;
    assert!(
        !started,
        "the fetcher started on 0.0.0.0:{port} with no token and no platform auth: \
         {first:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for named in ["ALLDOCS_FETCHER_TOKEN", "ALLDOCS_TRUST_PLATFORM_AUTH"] {
        assert!(
            stderr.contains(named),
            "the refusal names {named}: {stderr}"
        );
    }
    Ok(())
}

/// A coordinator on the host leases to the container: every packument of an origin on
/// loopback is stored, byte for byte, written by the container's user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_run_stores_every_packument() -> Result<()> {
    let sim = SimServer::loopback(300, 1500).await?;
    let dir = SharedDir::new()?;
    let dir_path = dir.path.clone();
    let origin = sim.url();
    let (store, container) = blocking(move || {
        let c = platform_container(image(), &dir, &origin)?;
        Ok(((dir, dir_path), c))
    })
    .await?;
    let opts = [
        "--pivots",
        "g,p",
        "--lease-size",
        "40",
        "--store",
        &store.0.store_url(),
        "--fetcher",
        &container.url(),
    ];
    let argv = job_args("run", &store.1, &sim.url(), &opts);
    let outcome =
        alldocs_coordinator::run::job::job(parse(&argv), false, std::future::pending(), None)
            .await
            .map_err(|e| (exit_code(&e), format!("{e:#}")));
    assert_eq!(outcome, Ok(ExitCode::SUCCESS));
    let files = stored_files(&store.1.join("data"));
    assert_eq!(files.len(), 300);
    for (name, bytes) in &files {
        assert_eq!(
            Some(bytes.clone()),
            sim.registry().document(name, false),
            "{name}"
        );
    }
    assert_eq!(sim.stats().packument_requests, 300);
    let packs = pack_files(&store.1.join("data"));
    let first = packs.first().context("no pack")?;
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(first)?);
    assert_eq!(owner, UID, "objects are written by the container's user");
    Ok(())
}

/// `podman stop -t 10` (SIGTERM, then SIGKILL after 10 s, as Cloud Run scales in) ends the
/// fetcher mid-run within the 10 s, exit 0, each lease ended with a summary of what it left
/// unfinished: no stream breaks, no lease is left open in the checkpoint, no item failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_podman_stop_ends_the_fetcher_and_its_leases_cleanly() -> Result<()> {
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: 3000,
            mean_bytes: 800,
            latency_ms: 50,
            ..Default::default()
        },
    )
    .await?;
    let dir = SharedDir::new()?;
    let (store_url, dir_path) = (dir.store_url(), dir.path.clone());
    let origin = sim.url();
    let container =
        blocking(move || platform_container(image(), &dir, &origin).map(|c| (c, dir))).await?;
    let opts = [
        "--pivots",
        "m",
        "--lease-size",
        "200",
        "--max-in-flight",
        "3",
        "--concurrency",
        "4",
        "--store",
        &store_url,
        "--fetcher",
        &container.0.url(),
    ];
    let argv = job_args("serve", &dir_path, &sim.url(), &opts);
    let (stop, stopped) = oneshot::channel::<()>();
    let (tx, rx) = oneshot::channel::<SocketAddr>();
    let job = tokio::spawn(alldocs_coordinator::run::job::job(
        parse(&argv),
        true,
        async move {
            let _ = stopped.await;
            alldocs_fetcher::serve::telemetry::Signal::Terminate
        },
        Some(tx),
    ));
    let api = format!("http://{}", rx.await?);
    let p = wait_until(&api, |p| {
        p.packuments_done >= 100 && p.leases_in_flight >= 3
    })
    .await?;
    assert!(p.packuments_done < 3000, "still fetching when stopped");
    let (container, _dir) = container;
    let (took, code) = blocking(move || container.stop(10)).await?;
    println!("podman stop -t 10 took {took:?}");
    assert!(took < Duration::from_secs(10), "podman stop took {took:?}");
    assert_eq!(code, 0, "the fetcher's exit code after SIGTERM");
    // With its only fetcher gone the run stops, as documented, keeping what it finished.
    let err = job.await?.expect_err("no fetcher is left");
    assert!(
        format!("{err:#}").contains("no fetcher answered"),
        "{err:#}"
    );
    drop(stop);
    assert_leases_ended_by_the_fetcher(&dir_path.join("alldocs.sqlite"))
}

/// Every lease the checkpoint records has ended; the ones in flight at SIGTERM ended with
/// the fetcher's own summary, none by a broken stream.
fn assert_leases_ended_by_the_fetcher(db: &Path) -> Result<()> {
    let conn = rusqlite::Connection::open(db)?;
    let leases: Vec<(Option<i64>, Option<String>)> = conn
        .prepare("SELECT ended_ms, outcome FROM leases")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    assert!(
        leases.iter().all(|(ended, _)| ended.is_some()),
        "{leases:?}"
    );
    let outcomes: Vec<&str> = leases.iter().filter_map(|(_, o)| o.as_deref()).collect();
    let stopped = outcomes
        .iter()
        .filter(|o| o.starts_with("fetcher stopped with"))
        .count();
    assert!(
        stopped >= 3,
        "leases ended by SIGTERM's summary: {outcomes:?}"
    );
    assert!(
        !outcomes
            .iter()
            .any(|o| o.contains("broke") || o.contains("without a summary")),
        "{outcomes:?}"
    );
    // Their items wait for the next fetcher; being told to stop failed none of them.
    let statuses = checkpoint_statuses(db);
    let count = |s: &str| statuses.values().filter(|v| *v == s).count();
    assert!(count("pending") > 0 && count("failed") == 0, "{statuses:?}");
    Ok(())
}

/// An HTTPS front for an origin on loopback, with a certificate from a private CA made
/// here: counts the TLS handshakes that succeeded.
struct TlsOrigin {
    port: u16,
    ca_pem: String,
    handshakes: Arc<AtomicU64>,
}

async fn tls_origin(backend: SocketAddr) -> Result<TlsOrigin> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "alldocs container test CA");
    let ca = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &ca, &ca_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let handshakes = Arc::new(AtomicU64::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    Ok(TlsOrigin {
        port,
        ca_pem: ca.pem(),
        handshakes,
    })
}

/// The image with `ca_pem` added to its CA bundle the Debian way (`update-ca-certificates`),
/// as an operator behind a private CA would build it.
fn image_trusting(ca_pem: &str) -> Result<String> {
    let context = tempfile::tempdir()?;
    std::fs::write(context.path().join("private-ca.crt"), ca_pem)?;
    std::fs::write(
        context.path().join("Containerfile"),
        format!(
            "FROM {}\nUSER 0\nCOPY private-ca.crt /usr/local/share/ca-certificates/\n\
             RUN update-ca-certificates\nUSER {UID}:{UID}\n",
            image()
        ),
    )?;
    let ctx = context.path().to_str().context("path")?;
    podman_ok(&["build", "--isolation=chroot", "-q", ctx])
}

/// How many certificates the image's CA bundle holds.
fn certificates_in_the_bundle() -> Result<usize> {
    let name = format!("alldocs-test-{}-bundle", std::process::id());
    let mut args = podman_run_args(&name);
    let cat = [
        "--entrypoint",
        "cat",
        image(),
        "/etc/ssl/certs/ca-certificates.crt",
    ];
    args.extend(cat.map(String::from));
    let bundle = podman_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(bundle.matches("BEGIN CERTIFICATE").count())
}

/// One packument lease for `items` from `registry` through a container of `image`: the
/// packuments stored, the reasons of those that failed, and the objects in the store.
async fn lease_through(
    image: String,
    registry: &str,
    items: &[(String, String)],
) -> Result<(usize, Vec<String>, usize)> {
    let dir = SharedDir::new()?;
    let (store_url, data) = (dir.store_url(), dir.path.join("data"));
    let allowed = registry.to_string();
    let container =
        blocking(move || platform_container(&image, &dir, &allowed).map(|c| (c, dir))).await?;
    let mut client = FetcherClient::connect(container.0.url()).await?;
    let events = fetch_all(&mut client, packument_lease(registry, &store_url, items)).await?;
    let stored = events
        .iter()
        .filter(|e| matches!(e, Event::Stored(_)))
        .count();
    let failed = events
        .iter()
        .filter_map(|e| match e {
            Event::Failed(f) => Some(f.reason.clone()),
            _ => None,
        })
        .collect();
    Ok((stored, failed, stored_files(&data).len()))
}

/// The fetcher in the image verifies HTTPS against the image's CA bundle: the bundle holds
/// the public roots; a registry with a private CA's certificate is refused (nothing stored,
/// no TLS session, no request reaches it) until that CA is added to the bundle, then every
/// packument is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_https_works_only_once_the_ca_is_in_the_images_bundle() -> Result<()> {
    let sim = SimServer::loopback(20, 1000).await?;
    let origin = tls_origin(sim.addr()).await?;
    let registry = format!("https://127.0.0.1:{}", origin.port);
    let roots = blocking(certificates_in_the_bundle).await?;
    assert!(
        roots > 100,
        "the image's CA bundle holds {roots} certificates"
    );
    let items: Vec<(String, String)> = sim
        .registry()
        .names()
        .map(|n| (n.to_string(), sim.registry().rev(n).unwrap_or_default()))
        .collect();

    let (stored, failed, files) = lease_through(image().to_string(), &registry, &items).await?;
    assert_eq!((stored, failed.len(), files), (0, 20, 0));
    assert!(
        failed.iter().all(|r| r.contains("certificate")),
        "{failed:?}"
    );
    assert_eq!(origin.handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(sim.stats().packument_requests, 0);

    let ca_pem = origin.ca_pem.clone();
    let trusting = blocking(move || image_trusting(&ca_pem)).await?;
    let outcome = lease_through(trusting.clone(), &registry, &items).await;
    let _ = blocking(move || podman_ok(&["rmi", &trusting])).await;
    let (stored, failed, files) = outcome?;
    assert_eq!((stored, failed.len(), files), (20, 0, 20), "{failed:?}");
    assert!(origin.handshakes.load(Ordering::SeqCst) > 0);
    assert_eq!(sim.stats().packument_requests, 20);
    Ok(())
}
