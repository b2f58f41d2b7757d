//! Prometheus metrics in the OpenMetrics text format, served by [`router`] on a
//! listener of their own (`INFLUXION_METRICS_LISTEN`), never on the API's port. The
//! scrape is not authenticated: bind it to a private address.
//!
//! Every label has a small, fixed set of values: the route template (axum's
//! `MatchedPath`, never the raw path a caller chooses), a known method, the status, an
//! outcome, or the slug of a refusal. Values that live elsewhere (the identity
//! provider's key fetches, the approval queue) are read at scrape time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use influxion_auth::JwksRefreshes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::AppState;

/// The `Content-Type` of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric name starts with this (and `_`).
const PREFIX: &str = "influxion";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request and operation latencies: 1 ms to about 33 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Operations per writer batch: 1 to 1024.
fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

fn outcome(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "error"
    }
}

struct Inner {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Histograms<RouteLabels>,
    sign_duration: Histograms<OutcomeLabels>,
    issue_duration: Histograms<OutcomeLabels>,
    token_refusals: Family<ReasonLabels, Counter>,
    rate_limited: Family<OperationLabels, Counter>,
    audit_append: Histogram,
    audit_batch: Histogram,
    db_pool: Family<StateLabels, Gauge>,
}

/// The keyserver's metric families; cheap to clone (one registry behind an `Arc`), so
/// the HTTP layer, the routes and the store's hooks record into the same one.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        let http_duration = Histograms::<RouteLabels>::new_with_constructor(latency);
        registry.register_with_unit(
            "http_request_duration",
            "Time to the response headers, by route template and method",
            Unit::Seconds,
            http_duration.clone(),
        );
        let sign_duration = Histograms::<OutcomeLabels>::new_with_constructor(latency);
        registry.register_with_unit(
            "sign_duration",
            "Signatures: the key backend's signature and the commit of its audit record",
            Unit::Seconds,
            sign_duration.clone(),
        );
        let issue_duration = Histograms::<OutcomeLabels>::new_with_constructor(latency);
        registry.register_with_unit(
            "certificate_issue_duration",
            "Certificate issuance: the CA key's signature and the commit of the record",
            Unit::Seconds,
            issue_duration.clone(),
        );
        let token_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "token_refusals",
            "Bearer tokens refused, by reason (the problem type's slug)",
            token_refusals.clone(),
        );
        let rate_limited = Family::<OperationLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a per-subject rate limit, by operation",
            rate_limited.clone(),
        );
        let audit_append = latency();
        registry.register_with_unit(
            "audit_append_duration",
            "Audit writer: time to commit one batch of operations",
            Unit::Seconds,
            audit_append.clone(),
        );
        let audit_batch = batch_sizes();
        registry.register(
            "audit_batch_size",
            "Audit writer: operations committed per batch (group commit)",
            audit_batch.clone(),
        );
        let db_pool = Family::<StateLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database pool connections, in use and idle",
            db_pool.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            http_requests,
            http_duration,
            sign_duration,
            issue_duration,
            token_refusals,
            rate_limited,
            audit_append,
            audit_batch,
            db_pool,
        }))
    }

    /// One HTTP request answered: `route` is the template (`/v1/keys/{name}/sign`).
    fn http(&self, route: &str, method: &'static str, status: StatusCode, elapsed: Duration) {
        let m = &self.0;
        m.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                method,
                status: status.as_u16(),
            })
            .inc();
        m.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A signature: the backend's signature and its audit record's commit.
    pub(crate) fn sign(&self, ok: bool, elapsed: Duration) {
        self.0
            .sign_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome(ok),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A certificate issued (or not): the CA key's signature and the record's commit.
    pub(crate) fn issue(&self, ok: bool, elapsed: Duration) {
        self.0
            .issue_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome(ok),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A bearer token refused; `reason` is the problem's slug (a fixed set).
    pub(crate) fn token_refused(&self, reason: &'static str) {
        self.0
            .token_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A request refused by a per-subject rate limit (`sign` or `certificate`).
    pub(crate) fn rate_limited(&self, operation: &'static str) {
        self.0
            .rate_limited
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// The store's writer committed one batch of `size` operations in `duration` (the
    /// audit records' append latency and the group commit's size); see the
    /// `CommitObserver` below.
    pub fn store_batch(&self, size: usize, duration: Duration) {
        self.0.audit_batch.observe(size as f64);
        self.0.audit_append.observe(duration.as_secs_f64());
    }

    /// The database pool's connections in use and idle, now (set at each scrape).
    pub fn db_pool(&self, in_use: u64, idle: u64) {
        let gauge = |state, v: u64| {
            self.0
                .db_pool
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        gauge("in_use", in_use);
        gauge("idle", idle);
    }

    /// The exposition: the recorded families, then the values read at scrape time.
    pub fn encode(&self, scraped: &Scraped) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::text;
        let mut now = Registry::with_prefix(PREFIX);
        let jwks = Family::<OutcomeLabels, Counter>::default();
        now.register(
            "jwks_refreshes",
            "Fetches of the identity provider's signing keys, by outcome",
            jwks.clone(),
        );
        for (ok, n) in [(true, scraped.jwks.ok), (false, scraped.jwks.failed)] {
            jwks.get_or_create(&OutcomeLabels {
                outcome: outcome(ok),
            })
            .inc_by(n);
        }
        let queue = Family::<KindLabels, Gauge>::default();
        now.register(
            "approval_queue_depth",
            "Pending, unexpired signing requests and policy changes (counted up to 1000 each)",
            queue.clone(),
        );
        // Absent rather than a stale or made-up number when the database did not answer.
        for (kind, depth) in [
            ("signing_request", scraped.pending_requests),
            ("policy_change", scraped.pending_policy_changes),
        ] {
            if let Some(d) = depth {
                queue
                    .get_or_create(&KindLabels { kind })
                    .set(i64::try_from(d).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        text::encode_registry(&mut out, &self.0.registry)?;
        text::encode_registry(&mut out, &now)?;
        text::encode_eof(&mut out)?;
        Ok(out)
    }
}

/// The store reports each batch its writer commits (`Store::observe_commits`).
impl influxion_store::CommitObserver for Metrics {
    fn batch_committed(&self, operations: usize, took: Duration) {
        self.store_batch(operations, took);
    }
}

/// Values that live elsewhere, read at each scrape.
#[derive(Debug, Clone, Default)]
pub struct Scraped {
    pub jwks: JwksRefreshes,
    pub pending_requests: Option<u64>,
    pub pending_policy_changes: Option<u64>,
}

impl Scraped {
    async fn gather(st: &AppState) -> Self {
        let now = crate::routes::now_unix();
        let (pending_requests, pending_policy_changes) = match st.store.pending_counts(now).await {
            Ok((r, c)) => (Some(r), Some(c)),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: the approval queue could not be read");
                (None, None)
            }
        };
        let pool = st.store.pool_status();
        let idle = u64::try_from(pool.idle).unwrap_or(u64::MAX);
        st.metrics
            .db_pool(u64::from(pool.open).saturating_sub(idle), idle);
        Self {
            jwks: st.validator.jwks_refreshes(),
            pending_requests,
            pending_policy_changes,
        }
    }
}

/// Methods as labels: the standard ones, anything else is `other` (a caller may send
/// any token as a method).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The tower middleware of `app`: counts every answer by route template, method and
/// status, and times it to its response headers. Requests that match no route are
/// `unmatched`, whatever their path.
pub(crate) async fn track(State(m): State<Metrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let resp = next.run(req).await;
    m.http(&route, method, resp.status(), started.elapsed());
    resp
}

/// The metrics listener's router: `GET /metrics` and nothing else.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
}

async fn scrape(State(st): State<AppState>) -> Response {
    let scraped = Scraped::gather(&st).await;
    match st.metrics.encode(&scraped) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics could not be encoded");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn families_are_named_and_labelled() {
        let m = Metrics::new();
        m.http(
            "/v1/keys/{name}/sign",
            "POST",
            StatusCode::OK,
            Duration::from_millis(3),
        );
        m.http("unmatched", "GET", StatusCode::NOT_FOUND, Duration::ZERO);
        m.sign(true, Duration::from_millis(2));
        m.issue(false, Duration::from_millis(2));
        m.token_refused("token-expired");
        m.token_refused("token-expired");
        m.rate_limited("sign");
        m.store_batch(3, Duration::from_millis(1));
        m.db_pool(2, 3);
        let text = m
            .encode(&Scraped {
                jwks: JwksRefreshes { ok: 4, failed: 1 },
                pending_requests: Some(2),
                pending_policy_changes: None,
            })
            .unwrap();
        let has = |series: &str, value: &str| {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        };
        has(
            r#"influxion_http_requests_total{route="/v1/keys/{name}/sign",method="POST",status="200"}"#,
            "1",
        );
        has(
            r#"influxion_http_requests_total{route="unmatched",method="GET",status="404"}"#,
            "1",
        );
        has(
            r#"influxion_http_request_duration_seconds_count{route="/v1/keys/{name}/sign",method="POST"}"#,
            "1",
        );
        has(
            r#"influxion_sign_duration_seconds_count{outcome="ok"}"#,
            "1",
        );
        has(
            r#"influxion_certificate_issue_duration_seconds_count{outcome="error"}"#,
            "1",
        );
        has(
            r#"influxion_token_refusals_total{reason="token-expired"}"#,
            "2",
        );
        has(r#"influxion_rate_limited_total{operation="sign"}"#, "1");
        has("influxion_audit_batch_size_count", "1");
        has("influxion_audit_batch_size_sum", "3.0");
        has("influxion_audit_append_duration_seconds_count", "1");
        has(r#"influxion_db_pool_connections{state="in_use"}"#, "2");
        has(r#"influxion_db_pool_connections{state="idle"}"#, "3");
        has(r#"influxion_jwks_refreshes_total{outcome="ok"}"#, "4");
        has(r#"influxion_jwks_refreshes_total{outcome="error"}"#, "1");
        has(
            r#"influxion_approval_queue_depth{kind="signing_request"}"#,
            "2",
        );
        assert!(!text.contains(r#"kind="policy_change""#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
