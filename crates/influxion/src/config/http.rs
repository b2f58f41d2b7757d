//! `[http]` / `INFLUXION_HTTP_*`: the limits of both HTTP servers (keyserver and
//! keyclient alike).

use std::time::Duration;

use super::{env_u64, err, ConfigError, FileHttp};

/// `[http]` / `INFLUXION_HTTP_*`: how long a client may take, and how many may connect.
pub(crate) fn http_limits(file: &FileHttp) -> Result<influxion_edge::Limits, ConfigError> {
    let d = influxion_edge::Limits::default();
    let secs = |setting: &'static str,
                var: &'static str,
                toml: Option<u64>,
                default: Duration|
     -> Result<Duration, ConfigError> {
        let v = env_u64(var)?.or(toml).unwrap_or(default.as_secs());
        if !(1..=3600).contains(&v) {
            return Err(err(
                setting,
                format!("{v} is not between 1 and 3600 seconds"),
            ));
        }
        Ok(Duration::from_secs(v))
    };
    let max_connections = env_u64("INFLUXION_HTTP_MAX_CONNECTIONS")?
        .or(file.max_connections)
        .unwrap_or(d.max_connections as u64);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(err(
            "http.max_connections / INFLUXION_HTTP_MAX_CONNECTIONS",
            format!("{max_connections} is not between 1 and 1000000"),
        ));
    }
    Ok(influxion_edge::Limits {
        header_read_timeout: secs(
            "http.header_timeout_secs / INFLUXION_HTTP_HEADER_TIMEOUT_SECS",
            "INFLUXION_HTTP_HEADER_TIMEOUT_SECS",
            file.header_timeout_secs,
            d.header_read_timeout,
        )?,
        body_read_timeout: secs(
            "http.body_timeout_secs / INFLUXION_HTTP_BODY_TIMEOUT_SECS",
            "INFLUXION_HTTP_BODY_TIMEOUT_SECS",
            file.body_timeout_secs,
            d.body_read_timeout,
        )?,
        idle_timeout: secs(
            "http.idle_timeout_secs / INFLUXION_HTTP_IDLE_TIMEOUT_SECS",
            "INFLUXION_HTTP_IDLE_TIMEOUT_SECS",
            file.idle_timeout_secs,
            d.idle_timeout,
        )?,
        // Checked to be at most 1 000 000 above.
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
    })
}
