//! An independent gRPC client for end-to-end tests: `tests/py/grpc_reflect.py`, a tiny
//! grpcurl in Python that learns every service and message from server reflection alone
//! (no `.proto` file, no generated code), and prints responses as proto3 JSON with the
//! proto's field names.
//!
//! The Python packages (pinned in `tests/py/requirements.txt`) live in a venv at
//! `tests/py/.venv`, created on first use under a file lock so that parallel test
//! processes install once. Set `ALLDOCS_PYTHON` to a python that already has them to
//! use that instead (CI).

use std::{
    ffi::OsStr,
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// How long one unary call through the script may take, start-up included.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// `tests/py`.
pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py")
}

/// The reflection client script.
pub fn script() -> PathBuf {
    py_dir().join("grpc_reflect.py")
}

/// An executable the venv's packages installed (`moto_server`, …), next to its python.
pub fn venv_tool(name: &str) -> Result<PathBuf> {
    let python = python_env()?;
    let tool = python.with_file_name(name);
    if tool.exists() {
        Ok(tool)
    } else {
        bail!("{} is not installed next to {}", name, python.display())
    }
}

/// The python executable of an environment with the packages of `tests/py/requirements.txt`:
/// `$ALLDOCS_PYTHON` if set, else the venv `tests/py/.venv` (or `$ALLDOCS_PY_VENV`), created
/// and installed on first use under the file lock `tests/py/.install.lock`, and reinstalled
/// when its packages are not the pinned versions.
pub fn python_env() -> Result<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| prepare_python().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Checks that the running python has the pinned packages at their versions
/// (`--any-version`: merely importable). Exit status 0 when so; what is wrong on stdout.
const CHECK_PACKAGES: &str = r##"
import sys, importlib.metadata as md
bad = []
if sys.argv[2] != "--any-version":
    for line in open(sys.argv[1]):
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, _, want = line.partition("==")
        name = name.split("[")[0]  # extras, as in moto[server]
        try:
            have = md.version(name.strip())
        except md.PackageNotFoundError:
            have = None
        if have != want.strip():
            bad.append(f"{name.strip()}: want {want.strip()}, have {have}")
try:
    import grpc, google.protobuf.json_format, duckdb, pyarrow.parquet
    import grpc_reflection.v1alpha.proto_reflection_descriptor_database
except ImportError as e:
    bad.append(str(e))
print("; ".join(bad))
sys.exit(1 if bad else 0)
"##;

fn has_packages(python: &Path, exact: bool) -> Result<(), String> {
    let requirements = py_dir().join("requirements.txt");
    let out = Command::new(python)
        .arg("-c")
        .arg(CHECK_PACKAGES)
        .arg(&requirements)
        .arg(if exact { "--exact" } else { "--any-version" })
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

fn prepare_python() -> Result<PathBuf> {
    if let Some(python) = std::env::var_os("ALLDOCS_PYTHON").filter(|p| !p.is_empty()) {
        let python = PathBuf::from(python);
        has_packages(&python, false).map_err(|e| {
            anyhow!(
                "ALLDOCS_PYTHON={} lacks the packages of tests/py/requirements.txt: {e}",
                python.display()
            )
        })?;
        return Ok(python);
    }
    let dir = py_dir();
    let venv = std::env::var_os("ALLDOCS_PY_VENV")
        .filter(|p| !p.is_empty())
        .map_or_else(|| dir.join(".venv"), PathBuf::from);
    let python = venv_python(&venv);
    if python.exists() && has_packages(&python, true).is_ok() {
        return Ok(python);
    }
    let lock = File::create(dir.join(".install.lock"))
        .with_context(|| format!("creating {}", dir.join(".install.lock").display()))?;
    lock.lock().context("locking tests/py/.install.lock")?;
    // Another process may have installed while we waited for the lock.
    if python.exists() && has_packages(&python, true).is_ok() {
        return Ok(python);
    }
    if !python.exists() {
        let bootstrap = std::env::var_os("PYTHON3").unwrap_or_else(|| "python3".into());
        run_quietly(
            Command::new(&bootstrap).args([OsStr::new("-m"), OsStr::new("venv"), venv.as_os_str()]),
            &format!(
                "creating the venv {} (is python3 with the venv module installed?)",
                venv.display()
            ),
        )?;
    }
    run_quietly(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "-r",
            ])
            .arg(dir.join("requirements.txt")),
        &format!(
            "installing tests/py/requirements.txt into {}",
            venv.display()
        ),
    )?;
    has_packages(&python, true).map_err(|e| {
        anyhow!(
            "after installing tests/py/requirements.txt, {} still lacks: {e}",
            python.display()
        )
    })?;
    Ok(python)
}

fn run_quietly(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!(
            "{what}: cannot start {}",
            Path::new(cmd.get_program()).display()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs the reflection client with `args`, killing it after `limit`; its stdout on success.
pub fn run_script(args: &[&str], limit: Duration) -> Result<String> {
    run_py(&script(), args, limit)
}

/// Runs the script `tests/py/<script>` (or a path) with `args` in the venv, killing it
/// after `limit`; its stdout on success.
pub fn run_py(script: &Path, args: &[&str], limit: Duration) -> Result<String> {
    let script = py_dir().join(script);
    let python = python_env()?;
    let mut child = Command::new(&python)
        .arg(&script)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} {} took longer than {limit:?}; stderr: {}",
                script.display(),
                args.join(" "),
                String::from_utf8_lossy(&stderr.join())
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (stdout.join(), stderr.join());
    if !status.success() {
        bail!(
            "{} {} failed ({status}): {}",
            script.display(),
            args.join(" "),
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    String::from_utf8(stdout).with_context(|| format!("{} printed non-UTF-8", script.display()))
}

/// Reads a pipe to its end on a thread.
struct Drain(Option<thread::JoinHandle<Vec<u8>>>);

fn drain(pipe: Option<impl Read + Send + 'static>) -> Drain {
    Drain(pipe.map(|mut pipe| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    }))
}

impl Drain {
    fn join(self) -> Vec<u8> {
        self.0.and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

/// Calls the unary `method` (`package.Service/Method`) on the plaintext server at `addr`
/// (`HOST:PORT`) with `request_json`, using reflection `v1` or `v1alpha`; the response as
/// proto3 JSON (proto field names, zero values included, 64-bit integers as strings).
pub fn reflect_call(
    addr: &str,
    method: &str,
    request_json: &str,
    reflection: &str,
) -> Result<Value> {
    let out = run_script(
        &[addr, method, request_json, "--reflection", reflection],
        CALL_LIMIT,
    )?;
    serde_json::from_str(out.trim())
        .with_context(|| format!("{method} printed something other than one JSON value: {out}"))
}

/// Calls the server-streaming `method` until the stream ends, `max` messages arrived, or
/// `limit` passed (an error); one JSON value per message.
pub fn reflect_stream(
    addr: &str,
    method: &str,
    request_json: &str,
    reflection: &str,
    max: Option<usize>,
    limit: Duration,
) -> Result<Vec<Value>> {
    let max = max.map(|m| m.to_string());
    let timeout = format!("{:.3}", limit.as_secs_f64());
    let mut args = vec![
        addr,
        method,
        request_json,
        "--reflection",
        reflection,
        "--timeout",
        &timeout,
    ];
    if let Some(max) = &max {
        args.extend(["--max", max]);
    }
    // The script's own deadline ends the call; the process limit is a backstop.
    let out = run_script(&args, limit + Duration::from_secs(30))?;
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("{method} printed a non-JSON line: {l}"))
        })
        .collect()
}

/// The services the server at `addr` lists through reflection `v1` or `v1alpha`.
pub fn reflect_list(addr: &str, reflection: &str) -> Result<Vec<String>> {
    let out = run_script(&[addr, "--list", "--reflection", reflection], CALL_LIMIT)?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// A 64-bit integer field of proto3 JSON (a string there) or a 32-bit one (a number).
pub fn json_u64(message: &Value, field: &str) -> Result<u64> {
    match &message[field] {
        Value::String(s) => s
            .parse()
            .with_context(|| format!("field `{field}` is not an integer: {s:?}")),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| anyhow!("field `{field}` is not an unsigned integer: {n}")),
        Value::Null => bail!("field `{field}` is missing from {message}"),
        other => bail!("field `{field}` is not an integer: {other}"),
    }
}
