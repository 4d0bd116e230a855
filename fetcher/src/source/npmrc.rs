//! The registry URL and tokens as npm itself reads them: `npm_config_registry`, `.npmrc`
//! files (project, then user), `npm config get registry`, and `NPM_TOKEN`.

use std::{fmt, path::PathBuf, process::Command, time::Duration};

/// A token that never shows itself in logs, errors or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The token itself; only for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where one token may go: one scheme, and npm's "nerf dart" (`//host[:port]/path/`) of
/// the host, port and path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Scope {
    /// `None` for a token from `.npmrc` whose scheme is not known yet: https only, unless
    /// [`Credentials::bind_schemes`] finds the configured registry under it.
    scheme: Option<String>,
    dart: String,
}

/// Tokens by scope: a token is sent only to URLs of exactly its scheme, host and port,
/// under its path prefix — never over http when it belongs to https, never to another
/// port or path, never to a URL with a `.`/`..` segment hidden in percent-encoding.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    tokens: Vec<(Scope, Secret)>,
}

impl Credentials {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token for every URL under `registry_url`, over that URL's scheme only.
    pub fn insert(&mut self, registry_url: &str, token: Secret) {
        let scheme = url::Url::parse(registry_url)
            .ok()
            .map(|u| u.scheme().to_string())
            .filter(|s| s == "http" || s == "https");
        self.put(
            Scope {
                scheme,
                dart: nerf_dart(registry_url),
            },
            token,
        );
    }

    fn put(&mut self, scope: Scope, token: Secret) {
        self.tokens.retain(|(s, _)| s != &scope);
        self.tokens.push((scope, token));
    }

    /// The token whose scope holds `url` with the longest path prefix, if any.
    pub fn token_for(&self, url: &str) -> Option<&Secret> {
        if self.tokens.is_empty() {
            // No token configured (the common case): nothing to parse for each request.
            return None;
        }
        let parsed = url::Url::parse(url).ok()?;
        if has_dot_segment(parsed.path()) {
            return None;
        }
        let dart = nerf_dart(parsed.as_str());
        self.tokens
            .iter()
            .filter(|(scope, _)| scope.scheme.as_deref().unwrap_or("https") == parsed.scheme())
            .filter(|(scope, _)| dart.starts_with(scope.dart.as_str()))
            .max_by_key(|(scope, _)| scope.dart.len())
            .map(|(_, token)| token)
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Gives each `.npmrc` token (`//host/path/:_authToken`, no scheme) the scheme of the
    /// configured `registry` when that registry lies under it; the others stay https-only.
    pub fn bind_schemes(&mut self, registry: &str) {
        let Ok(parsed) = url::Url::parse(registry) else {
            return;
        };
        let dart = nerf_dart(registry);
        for (scope, _) in &mut self.tokens {
            if scope.scheme.is_none() && dart.starts_with(scope.dart.as_str()) {
                scope.scheme = Some(parsed.scheme().to_string());
            }
        }
    }

    /// Binds `NPM_TOKEN` (if set) to `registry`, unless a token for it is configured
    /// already: npm's convention for the one registry a machine talks to.
    pub fn with_env_token(mut self, registry: &str) -> Self {
        self.bind_schemes(registry);
        let token = std::env::var("NPM_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        if let Some(token) = token {
            if self.token_for(registry).is_none() {
                self.insert(registry, Secret::new(token));
            }
        }
        self
    }
}

/// `https://host:8080/path/x` → `//host:8080/path/x/`: npm's scheme-less key for a URL.
pub fn nerf_dart(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        let rest = url.split_once("//").map_or(url, |(_, r)| r);
        return format!("//{}/", rest.trim_end_matches('/'));
    };
    let host = parsed.host_str().unwrap_or_default();
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = parsed.path().trim_end_matches('/');
    format!("//{host}{port}{path}/")
}

/// `//Host:port/path/` with its host in lowercase, as a parsed URL's would be.
fn lowercase_host(dart: &str) -> String {
    let rest = dart.trim_start_matches('/');
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    format!("//{}/{path}", authority.to_ascii_lowercase())
}

/// What npm's configuration says about registries and tokens.
#[derive(Clone, Debug, Default)]
pub struct NpmConfig {
    /// The configured registry, if any source named one.
    pub registry: Option<String>,
    /// Where the registry came from, for messages.
    pub registry_source: Option<String>,
    pub credentials: Credentials,
}

impl NpmConfig {
    /// Reads npm's configuration the way npm does, without asking `npm` itself.
    pub fn from_env_and_files() -> Self {
        let mut cfg = Self::default();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let files = npmrc_files();
        // Later files lose to earlier ones: project .npmrc, then the user's.
        for path in files.iter().rev() {
            if let Ok(text) = std::fs::read_to_string(path) {
                cfg.apply_npmrc(&text, &path.display().to_string());
            }
        }
        if let Some(reg) = env("npm_config_registry").or_else(|| env("NPM_CONFIG_REGISTRY")) {
            cfg.registry = Some(reg);
            cfg.registry_source = Some("npm_config_registry".into());
        }
        if let Some(reg) = &cfg.registry {
            cfg.credentials = cfg.credentials.with_env_token(reg);
        }
        cfg
    }

    /// Like [`Self::from_env_and_files`], then asks `npm config get registry` if nothing
    /// named a registry.
    pub fn load() -> Self {
        let mut cfg = Self::from_env_and_files();
        if cfg.registry.is_none() {
            if let Some(reg) = npm_config_get_registry() {
                cfg.credentials = cfg.credentials.with_env_token(&reg);
                cfg.registry = Some(reg);
                cfg.registry_source = Some("npm config get registry".into());
            }
        }
        cfg
    }

    fn apply_npmrc(&mut self, text: &str, source: &str) {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), expand_env(value.trim().trim_matches('"')));
            if key == "registry" {
                self.registry = Some(value);
                self.registry_source = Some(source.to_string());
            } else if let Some(dart) = key.strip_suffix(":_authToken") {
                if dart.starts_with("//") {
                    let scope = Scope {
                        scheme: None,
                        dart: lowercase_host(&format!("{}/", dart.trim_end_matches('/'))),
                    };
                    self.credentials.put(scope, Secret(value));
                }
            }
        }
    }
}

/// `${VAR}` in `.npmrc` values is replaced by the environment variable, as npm does.
fn expand_env(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let var = &rest[start + 2..start + len];
        out.push_str(&std::env::var(var).unwrap_or_default());
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

fn npmrc_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(dir) = std::env::current_dir() {
        files.push(dir.join(".npmrc"));
    }
    match std::env::var_os("npm_config_userconfig")
        .or_else(|| std::env::var_os("NPM_CONFIG_USERCONFIG"))
    {
        Some(path) => files.push(PathBuf::from(path)),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                files.push(PathBuf::from(home).join(".npmrc"));
            }
        }
    }
    files
}

fn npm_config_get_registry() -> Option<String> {
    let mut child = Command::new("npm")
        .args(["config", "get", "registry"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(25))
            }
            _ => {
                let _ = child.kill();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    let reg = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && reg.starts_with("http")).then_some(reg)
}

/// Whether any segment of `path`, percent-decoded, is `.` or `..` (`/` and `\` both split).
pub fn has_dot_segment(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded.split(['/', '\\']).any(|s| s == "." || s == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_go_only_to_their_own_host_and_path() {
        let mut cfg = NpmConfig::default();
        cfg.apply_npmrc(
            "registry=https://registry.example/npm/\n//registry.example/npm/:_authToken=s3cret\n",
            ".npmrc",
        );
        assert_eq!(
            cfg.registry.as_deref(),
            Some("https://registry.example/npm/")
        );
        let creds = &cfg.credentials;
        assert_eq!(
            creds
                .token_for("https://registry.example/npm/left-pad")
                .map(Secret::expose),
            Some("s3cret")
        );
        assert!(creds
            .token_for("https://registry.example/other/x")
            .is_none());
        assert!(creds.token_for("https://evil.example/npm/x").is_none());
        assert!(creds
            .token_for("https://registry.example:8443/npm/x")
            .is_none());
        assert!(!format!("{creds:?}").contains("s3cret"));
    }

    /// Credentials from an `.npmrc` text, finished as `NpmConfig` finishes them.
    fn configured(npmrc: &str) -> Credentials {
        let mut cfg = NpmConfig::default();
        cfg.apply_npmrc(npmrc, ".npmrc");
        if let Some(registry) = &cfg.registry {
            cfg.credentials.bind_schemes(registry);
        }
        cfg.credentials
    }

    fn sent(creds: &Credentials, url: &str) -> bool {
        creds.token_for(url).is_some()
    }

    #[test]
    fn a_token_for_https_is_never_sent_over_http_or_to_another_port() {
        let creds = configured(
            "registry=https://registry.example/npm/\n//Registry.Example/npm/:_authToken=s3cret\n",
        );
        assert!(sent(&creds, "https://registry.example/npm/left-pad"));
        assert!(sent(&creds, "https://registry.example:443/npm/@s%2fx"));
        assert!(sent(&creds, "https://REGISTRY.example/npm/x"));
        for url in [
            "http://registry.example/npm/left-pad",
            "http://registry.example:443/npm/left-pad",
            "https://registry.example:8443/npm/left-pad",
            "https://registry.example/npmx/left-pad",
            "https://registry.example/other/npm/x",
            "https://registry.example/npm/../other/x",
            "https://registry.example/npm/%2e%2e/other/x",
            "https://registry.example/npm/..%2fother",
            "https://registry.example.evil/npm/x",
            "https://evil.example/registry.example/npm/x",
        ] {
            assert!(!sent(&creds, url), "{url}");
        }
    }

    #[test]
    fn a_token_for_an_http_registry_stays_on_http_and_its_port() {
        let creds = configured(
            "registry=http://127.0.0.1:5984/npm\n//127.0.0.1:5984/npm/:_authToken=s3cret\n",
        );
        assert!(sent(&creds, "http://127.0.0.1:5984/npm/x"));
        assert!(!sent(&creds, "https://127.0.0.1:5984/npm/x"));
        assert!(!sent(&creds, "http://127.0.0.1:5985/npm/x"));
        assert!(!sent(&creds, "http://127.0.0.2:5984/npm/x"));
        // A token whose dart the registry does not lie under goes over https only.
        let other =
            configured("registry=http://127.0.0.1:5984/npm\n//mirror.example/:_authToken=s3cret\n");
        assert!(sent(&other, "https://mirror.example/x"));
        assert!(!sent(&other, "http://mirror.example/x"));
        let mut inserted = Credentials::new();
        inserted.insert("http://127.0.0.1:1/reg", Secret::new("t"));
        assert!(sent(&inserted, "http://127.0.0.1:1/reg/x"));
        assert!(!sent(&inserted, "https://127.0.0.1:1/reg/x"));
    }

    #[test]
    fn npm_token_binds_to_the_registry_unless_npmrc_has_one() {
        std::env::set_var("NPM_TOKEN", "from-env");
        let mut configured = Credentials::new();
        configured.insert("https://registry.example/", Secret::new("from-npmrc"));
        let kept = configured.with_env_token("https://registry.example/");
        assert_eq!(
            kept.token_for("https://registry.example/x")
                .map(Secret::expose),
            Some("from-npmrc")
        );
        let bound = Credentials::new().with_env_token("https://other.example/npm/");
        assert_eq!(
            bound
                .token_for("https://other.example/npm/x")
                .map(Secret::expose),
            Some("from-env")
        );
        assert!(
            bound.token_for("https://registry.example/x").is_none(),
            "only its own registry"
        );
    }

    #[test]
    fn npmrc_values_expand_environment_variables() {
        std::env::set_var("ALLDOCS_TEST_TOKEN_VAR", "from-env");
        assert_eq!(expand_env("${ALLDOCS_TEST_TOKEN_VAR}"), "from-env");
        assert_eq!(expand_env("a${ALLDOCS_TEST_UNSET_VAR}b"), "ab");
    }

    #[test]
    fn nerf_darts_drop_scheme_and_keep_port_and_path() {
        assert_eq!(
            nerf_dart("http://127.0.0.1:5984/registry"),
            "//127.0.0.1:5984/registry/"
        );
        assert_eq!(
            nerf_dart("https://registry.example/"),
            "//registry.example/"
        );
    }
}
