//! How a lease ended ([`LeaseEnd`]), and what a fetcher's error answer to a lease means:
//! work it judged invalid (the attempt counts), a fleet that is busy or gone (rest it, no
//! attempt), or a refusal of the coordinator itself, which stops the run with what to set
//! on which side.

use std::time::Duration;

use tonic::{Code, Status};

/// What a lease's end says about the fetcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It answered (whatever became of the work).
    Answered,
    /// It could not be reached or is saturated: rest it (for `retry_after`, if it said).
    Unreachable { retry_after: Option<Duration> },
    /// It refused the coordinator itself (its identity, its store or origins): stop the
    /// run, since every other lease would be refused alike.
    Stop,
}

/// How a lease ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseEnd {
    pub outcome: String,
    /// Whether the unfinished items' attempts count: not when the fetcher could not be
    /// reached, was told to stop, or refused the coordinator, which says nothing about
    /// the items.
    pub count_attempt: bool,
    pub verdict: Verdict,
}

impl LeaseEnd {
    pub fn counted(outcome: impl Into<String>) -> Self {
        Self {
            outcome: outcome.into(),
            count_attempt: true,
            verdict: Verdict::Answered,
        }
    }
    pub fn uncounted(outcome: impl Into<String>) -> Self {
        Self {
            outcome: outcome.into(),
            count_attempt: false,
            verdict: Verdict::Answered,
        }
    }
    pub fn unreachable(outcome: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self {
            outcome: outcome.into(),
            count_attempt: false,
            verdict: Verdict::Unreachable { retry_after },
        }
    }
    pub fn stop(outcome: impl Into<String>) -> Self {
        Self {
            outcome: outcome.into(),
            count_attempt: false,
            verdict: Verdict::Stop,
        }
    }
}

/// The longest rest a fetcher's retry hint may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// What a refusal is judged against: who was refused, and what the lease named.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The fetcher's URL (or `in-process`).
    pub fetcher: String,
    /// How the coordinator authenticated: `none`, `token`, `google` or `in-process`.
    pub auth: &'static str,
    /// The ID-token audience, for `google`.
    pub audience: Option<String>,
    pub store: String,
    pub replicate_origin: String,
    pub registry: String,
}

/// How a lease ended when the fetcher answered it with an error before any event.
pub fn refused_end(ctx: &Context, status: &Status) -> LeaseEnd {
    let fetcher = &ctx.fetcher;
    match status.code() {
        // The fetcher looked at the lease and refused it: that is about the work. (A
        // lease too large for the fetcher's message limit is refused as OUT_OF_RANGE.)
        Code::InvalidArgument | Code::OutOfRange => LeaseEnd::counted(format!(
            "fetcher {fetcher} refused the lease: {}",
            status.message()
        )),
        Code::Unauthenticated => LeaseEnd::stop(unauthenticated(ctx, status)),
        // Cloud Run's IAM check in front of the fetcher: 401 without an identity, 403
        // for one that may not invoke the service.
        _ if matches!(http_status(status), Some(401 | 403)) => {
            LeaseEnd::stop(unauthenticated(ctx, status))
        }
        Code::PermissionDenied => LeaseEnd::stop(permission_denied(ctx, status)),
        // Busy (Cloud Run's 429 arrives as UNAVAILABLE): rest the URL, try again later.
        Code::ResourceExhausted => LeaseEnd::unreachable(
            format!("fetcher {fetcher} is saturated: {}", status.message()),
            retry_after(status),
        ),
        // It could not be reached (or is overloaded): not the items' fault.
        _ => LeaseEnd::unreachable(
            format!("fetcher {fetcher} did not answer: {}", status.message()),
            retry_after(status),
        ),
    }
}

/// The HTTP status of an answer made by the HTTP layer in front of the fetcher (Cloud
/// Run's IAM check), not by the fetcher itself. tonic reports it as `… mapped from HTTP
/// status code 403` when the body is empty, and as `… while receiving response with
/// status: 403 Forbidden` when it is a page (Cloud Run's HTML), under another code.
fn http_status(status: &Status) -> Option<u16> {
    let said = status.message();
    ["HTTP status code ", "response with status: "]
        .iter()
        .find_map(|marker| {
            let at = said.find(marker)? + marker.len();
            said[at..].get(..3)?.parse().ok()
        })
}

/// The fetcher (or Cloud Run in front of it) did not accept the coordinator's identity.
fn unauthenticated(ctx: &Context, status: &Status) -> String {
    let fetcher = &ctx.fetcher;
    let said = format!("{:?}: {}", status.code(), status.message());
    let what_to_do = match ctx.auth {
        "token" => "set the same ALLDOCS_FETCHER_TOKEN on the coordinator and on the fetcher (or, for a Cloud Run service that checks IAM instead, --fetcher-auth google on the coordinator)".to_string(),
        "google" => format!(
            "grant the coordinator's service account roles/run.invoker on the service, and make sure it accepts the audience {}; a fetcher that checks ALLDOCS_FETCHER_TOKEN instead needs --fetcher-auth token and that token on the coordinator",
            ctx.audience.as_deref().unwrap_or(fetcher)
        ),
        _ => "it requires an identity: set ALLDOCS_FETCHER_TOKEN on the coordinator to the fetcher's ALLDOCS_FETCHER_TOKEN, or for a Cloud Run service that requires authentication pass --fetcher-auth google".to_string(),
    };
    let credential = match ctx.auth {
        "token" => "the coordinator's ALLDOCS_FETCHER_TOKEN",
        "google" => "the coordinator's Google ID token",
        _ => "a call without credentials",
    };
    format!("fetcher {fetcher} refused {credential} ({said}): {what_to_do}. {CARRY_ON}")
}

/// The fetcher's allow-lists do not cover what the lease names.
fn permission_denied(ctx: &Context, status: &Status) -> String {
    let fetcher = &ctx.fetcher;
    let said = status.message();
    let lower = said.to_lowercase();
    let origins = [&ctx.replicate_origin, &ctx.registry];
    let named_origin = origins
        .iter()
        .find(|o| !o.is_empty() && said.contains(o.as_str()));
    let refused = if !ctx.store.is_empty() && (said.contains(&ctx.store) || lower.contains("store"))
    {
        format!(
            "the lease's store {}: add it (or a prefix of it) to the fetcher's ALLDOCS_ALLOW_STORE (--allow-store)",
            redact(&ctx.store)
        )
    } else if named_origin.is_some() || lower.contains("origin") || lower.contains("registry") {
        let which = named_origin.map_or_else(
            || format!("{} or {}", redact(origins[0]), redact(origins[1])),
            |o| redact(o),
        );
        format!("the lease's origin {which}: add it to the fetcher's ALLDOCS_ALLOW_ORIGIN (--allow-origin)")
    } else {
        format!(
            "the lease (store {}, replicate origin {}, registry {}): check the fetcher's ALLDOCS_ALLOW_STORE and ALLDOCS_ALLOW_ORIGIN",
            redact(&ctx.store),
            redact(origins[0]),
            redact(origins[1])
        )
    };
    format!("fetcher {fetcher} refused {refused} (it said: {said}). {CARRY_ON}")
}

/// A URL as the user gave it, without its credentials.
fn redact(url: &str) -> String {
    let shown = alldocs_fetcher::source::http::redact(url);
    match shown.strip_suffix('/') {
        Some(trimmed) if !url.ends_with('/') => trimmed.to_string(),
        _ => shown,
    }
}

const CARRY_ON: &str =
    "The run stopped; the checkpoint keeps everything finished, so the same command carries on once that is fixed";

/// A retry hint the fetcher sent: gRPC's `grpc-retry-pushback-ms`, or `retry-after` in
/// seconds.
pub fn retry_after(status: &Status) -> Option<Duration> {
    let meta = status.metadata();
    let number = |key: &str| -> Option<u64> { meta.get(key)?.to_str().ok()?.trim().parse().ok() };
    number("grpc-retry-pushback-ms")
        .map(Duration::from_millis)
        .or_else(|| number("retry-after").map(Duration::from_secs))
        .map(|d| d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(auth: &'static str) -> Context {
        Context {
            fetcher: "https://f.example".into(),
            auth,
            audience: Some("https://f.example".into()),
            store: "gs://b/p".into(),
            replicate_origin: "http://127.0.0.1:1/registry".into(),
            registry: "http://127.0.0.1:2".into(),
        }
    }

    #[test]
    fn a_refused_identity_stops_the_run_and_says_what_to_set() {
        let end = refused_end(&ctx("none"), &Status::unauthenticated("no token"));
        assert_eq!(end.verdict, Verdict::Stop);
        assert!(!end.count_attempt);
        assert!(
            end.outcome
                .contains("set ALLDOCS_FETCHER_TOKEN on the coordinator"),
            "{}",
            end.outcome
        );
        let end = refused_end(&ctx("token"), &Status::unauthenticated("wrong"));
        assert!(
            end.outcome.contains("the same ALLDOCS_FETCHER_TOKEN"),
            "{}",
            end.outcome
        );
        // Cloud Run's IAM check answers 403 before the fetcher sees the call.
        let end = refused_end(
            &ctx("google"),
            &Status::permission_denied("HTTP status code 403"),
        );
        assert_eq!(end.verdict, Verdict::Stop);
        assert!(end.outcome.contains("roles/run.invoker"), "{}", end.outcome);
    }

    #[test]
    fn a_refused_store_or_origin_names_the_fetchers_allow_list() {
        let end = refused_end(
            &ctx("token"),
            &Status::permission_denied("store gs://b/p is not allowed"),
        );
        assert_eq!(end.verdict, Verdict::Stop);
        assert!(
            end.outcome.contains(
                "store gs://b/p: add it (or a prefix of it) to the fetcher's ALLDOCS_ALLOW_STORE"
            ),
            "{}",
            end.outcome
        );
        let end = refused_end(
            &ctx("token"),
            &Status::permission_denied("http://127.0.0.1:2 is not an allowed origin"),
        );
        assert!(
            end.outcome.contains(
                "origin http://127.0.0.1:2: add it to the fetcher's ALLDOCS_ALLOW_ORIGIN"
            ),
            "{}",
            end.outcome
        );
    }

    #[test]
    fn a_busy_fleet_rests_with_its_hint_and_costs_no_attempt() {
        let mut status = Status::resource_exhausted("too many requests");
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "1500".parse().unwrap());
        let end = refused_end(&ctx("none"), &status);
        assert_eq!(
            end.verdict,
            Verdict::Unreachable {
                retry_after: Some(Duration::from_millis(1500))
            }
        );
        assert!(!end.count_attempt);
        let mut status = Status::unavailable("HTTP status code 429");
        status
            .metadata_mut()
            .insert("retry-after", "9999".parse().unwrap());
        assert_eq!(
            refused_end(&ctx("none"), &status).verdict,
            Verdict::Unreachable {
                retry_after: Some(MAX_RETRY_AFTER)
            }
        );
        assert!(refused_end(&ctx("none"), &Status::invalid_argument("bad")).count_attempt);
    }
}
