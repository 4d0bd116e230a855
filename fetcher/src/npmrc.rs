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

/// Tokens keyed by npm's "nerf dart" (`//host[:port]/path/`): a token is sent only to
/// URLs under its own key.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    tokens: Vec<(String, Secret)>,
}

impl Credentials {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token for every URL under `registry_url` (scheme ignored, like npm).
    pub fn insert(&mut self, registry_url: &str, token: Secret) {
        self.tokens.push((nerf_dart(registry_url), token));
    }

    /// The token whose key is the longest prefix of `url`, if any.
    pub fn token_for(&self, url: &str) -> Option<&Secret> {
        let dart = nerf_dart(url);
        self.tokens
            .iter()
            .filter(|(key, _)| dart.starts_with(key.as_str()))
            .max_by_key(|(key, _)| key.len())
            .map(|(_, token)| token)
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Binds `NPM_TOKEN` (if set) to `registry`, unless a token for it is configured
    /// already: npm's convention for the one registry a machine talks to.
    pub fn with_env_token(mut self, registry: &str) -> Self {
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
                    self.credentials
                        .tokens
                        .retain(|(k, _)| k != &format!("{}/", dart.trim_end_matches('/')));
                    self.credentials
                        .tokens
                        .push((format!("{}/", dart.trim_end_matches('/')), Secret(value)));
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
