//! Relay configuration (see the README's config reference).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_proto::admin::AdminConfig;
use tether_proto::congestion::Congestion;
use tether_proto::headers::{DEFAULT_CLUSTER_HEADER, DEFAULT_NODE_HEADER};
use tether_proto::logging::LogConfig;
use tether_proto::runtime::RuntimeConfig;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub tunnel: TunnelConfig,
    pub ingress: IngressConfig,
    pub enroll: EnrollConfig,
    /// Admin HTTP listener: health, metrics, the registry as JSON, the status page.
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Scheduler shape: worker threads (read once at start).
    pub runtime: RuntimeConfig,
}

/// Enrollment and renewal of agent certificates (on when `ca_key` is set).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrollConfig {
    /// Key of the CA (or intermediate) that signs agent certificates; mode 0600 enforced.
    pub ca_key: Option<PathBuf>,
    /// Certificate of that issuing CA; defaults to `tunnel.ca`.
    pub ca_cert: Option<PathBuf>,
    /// Token store written by `tether-certs token create`; defaults to `tokens/` beside
    /// `ca_key`.
    pub tokens: Option<PathBuf>,
    /// Lifetime of issued agent certificates; agents renew at two thirds of it.
    #[serde(with = "humantime_serde")]
    pub cert_lifetime: Duration,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        EnrollConfig {
            ca_key: None,
            ca_cert: None,
            tokens: None,
            cert_lifetime: tether_proto::enroll::DEFAULT_AGENT_CERT_LIFETIME,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tunnel: TunnelConfig::default(),
            ingress: IngressConfig::default(),
            enroll: EnrollConfig::default(),
            admin: AdminConfig::on(([127, 0, 0, 1], 9090).into()),
            log: LogConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// QUIC (UDP) listener that agents dial.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunnelConfig {
    pub listen: SocketAddr,
    /// CA that signs agent certificates; the only trust anchor for agents.
    pub ca: PathBuf,
    /// The relay's server certificate (chain) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Trust domain agent identities must be in; read from the CA certificate if unset.
    pub trust_domain: Option<String>,
    /// Revocation list written by `tether-certs revoke`; defaults to `revoked.json` beside
    /// `ca`. Watched: changes apply without a restart.
    pub revocations: Option<PathBuf>,
    /// Congestion controller for what the relay sends (requests, uploads): `bbr`,
    /// `cubic` or `newreno`. Applies to connections made after a change.
    pub congestion: Congestion,
}

impl TunnelConfig {
    pub fn revocations_path(&self) -> PathBuf {
        self.revocations.clone().unwrap_or_else(|| {
            tether_certs::revocation::revocations_path(
                self.ca.parent().unwrap_or(std::path::Path::new(".")),
            )
        })
    }
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            listen: ([0, 0, 0, 0], 4433).into(),
            ca: "pki/ca.pem".into(),
            cert: "pki/relay.pem".into(),
            key: "pki/relay.key".into(),
            trust_domain: None,
            revocations: None,
            congestion: Congestion::default(),
        }
    }
}

/// HTTP/1.1 and h2c (prior knowledge) listener for cloud callers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    pub listen: SocketAddr,
    pub node_header: String,
    pub cluster_header: String,
    /// Longest wait for the response head; the body may stream for longer.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long SIGTERM/SIGINT waits for requests in flight before closing tunnels.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            listen: ([127, 0, 0, 1], 8080).into(),
            node_header: DEFAULT_NODE_HEADER.into(),
            cluster_header: DEFAULT_CLUSTER_HEADER.into(),
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
// figment::Jail's closures must return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_documented_example_parses() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "relay.toml",
                r#"
[tunnel]              # QUIC, UDP: agents connect here
listen = "127.0.0.1:4433"
ca = "pki/ca.pem"
cert = "pki/relay.pem"
key = "pki/relay.key"

[ingress]             # HTTP/1.1 and h2c (prior knowledge), TCP: cloud callers
listen = "127.0.0.1:8080"
node_header = "x-node-id"        # default
cluster_header = "x-cluster-id"  # default
"#,
            )?;
            jail.set_env("TETHER_INGRESS__REQUEST_TIMEOUT", "5s");
            let cfg: Config = tether_proto::config::load(
                Some(Path::new("relay.toml")),
                tether_proto::config::flags([("admin.listen", Some("127.0.0.1:1".into()))]),
            )
            .map_err(|e| *e)?;
            assert_eq!(cfg.tunnel.listen, "127.0.0.1:4433".parse().unwrap());
            assert_eq!(cfg.ingress.request_timeout, Duration::from_secs(5));
            assert_eq!(cfg.admin.listen, "127.0.0.1:1".parse().unwrap());
            assert_eq!(cfg.ingress.node_header, "x-node-id");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("relay.toml", "[ingress]\nlisten_addr = \"127.0.0.1:1\"\n")?;
            let r: Result<Config, _> =
                tether_proto::config::load(Some(Path::new("relay.toml")), serde_json::json!({}));
            assert!(r.unwrap_err().to_string().contains("listen_addr"));
            Ok(())
        });
    }
}
