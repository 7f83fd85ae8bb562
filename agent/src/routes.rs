//! The agent's route table: an allowlist of local services chosen by longest path prefix.
//! A request that matches no route reaches nothing.

use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::Uri;

use crate::config::RouteConfig;
use crate::metrics::{Metrics, RouteMetrics};
use crate::serve::UpstreamBody;
use crate::upstream::Pool;

#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    /// Where matching requests go; the request path is appended unchanged.
    pub upstream: String,
    /// `host:port` of the upstream: where the pool connects, and the `Host` of a request
    /// that came without one.
    pub authority: Authority,
    /// Keep-alive connections to the upstream (a reload starts a fresh pool).
    pub pool: Arc<Pool<UpstreamBody>>,
    pub metrics: RouteMetrics,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("route prefix {0:?} must start with '/'")]
    BadPrefix(String),
    #[error("route prefix {0:?} is listed twice")]
    Duplicate(String),
    #[error("route upstream {0:?} must be http://host:port (no path; https is not supported yet)")]
    BadUpstream(String),
}

/// Routes sorted longest prefix first, so the first match is the longest.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

impl Routes {
    pub fn new(cfg: &[RouteConfig], metrics: &Metrics) -> Result<Self, RouteError> {
        let mut routes = Vec::with_capacity(cfg.len());
        for rc in cfg {
            if !rc.prefix.starts_with('/') {
                return Err(RouteError::BadPrefix(rc.prefix.clone()));
            }
            if routes.iter().any(|r: &Route| r.prefix == rc.prefix) {
                return Err(RouteError::Duplicate(rc.prefix.clone()));
            }
            let bad = || RouteError::BadUpstream(rc.upstream.clone());
            let uri: Uri = rc.upstream.parse().map_err(|_| bad())?;
            let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
                return Err(bad());
            };
            if *scheme != Scheme::HTTP || !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                return Err(bad());
            }
            routes.push(Route {
                prefix: rc.prefix.clone(),
                upstream: rc.upstream.clone(),
                authority: authority.clone(),
                pool: Pool::new(authority.clone()),
                metrics: metrics.for_route(&rc.prefix),
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Routes(routes))
    }

    /// The route with the longest prefix of `path`.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.0.iter().find(|r| path.starts_with(&r.prefix))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(prefix: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            prefix: prefix.into(),
            upstream: upstream.into(),
        }
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let routes = Routes::new(
            &[
                rc("/", "http://127.0.0.1:3001"),
                rc("/downstream_service/", "http://127.0.0.1:3000"),
            ],
            &Metrics::default(),
        )
        .unwrap();
        assert_eq!(
            routes.find("/downstream_service/x").unwrap().upstream,
            "http://127.0.0.1:3000"
        );
        assert_eq!(
            routes.find("/other").unwrap().upstream,
            "http://127.0.0.1:3001"
        );
        assert_eq!(
            routes.find("/downstream_service/a?b").unwrap().authority,
            "127.0.0.1:3000"
        );
    }

    #[test]
    fn unmatched_paths_reach_nothing() {
        let routes =
            Routes::new(&[rc("/api/", "http://127.0.0.1:3000")], &Metrics::default()).unwrap();
        assert!(routes.find("/admin").is_none());
        assert!(routes.find("/api").is_none());
    }

    #[test]
    fn bad_routes_are_refused() {
        assert!(matches!(
            Routes::new(&[rc("api", "http://a:1")], &Metrics::default()),
            Err(RouteError::BadPrefix(_))
        ));
        assert!(matches!(
            Routes::new(
                &[rc("/", "http://a:1"), rc("/", "http://b:1")],
                &Metrics::default()
            ),
            Err(RouteError::Duplicate(_))
        ));
        for up in [
            "https://a:1",
            "http://a:1/path",
            "127.0.0.1:3000",
            "not a url",
        ] {
            assert!(
                matches!(
                    Routes::new(&[rc("/", up)], &Metrics::default()),
                    Err(RouteError::BadUpstream(_))
                ),
                "{up}"
            );
        }
    }
}
