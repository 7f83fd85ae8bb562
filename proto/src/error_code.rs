//! The error codes a caller can see in `x-tether-error`, with their HTTP status.
//!
//! Every error Tether itself produces (as opposed to one the on-prem service returns)
//! carries this header and a JSON body `{"error": "<code>", "detail": "..."}`, so a caller
//! can tell "the tunnel is down" from "the service said 502".

use http::StatusCode;

/// Header naming the Tether error behind a response Tether generated itself.
pub const ERROR_HEADER: &str = "x-tether-error";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Neither the node nor the cluster header is present.
    NoRouteHeader,
    /// A node or cluster ID in a header is not a valid ID.
    BadId,
    /// No live tunnel exists for the requested node or cluster.
    NoTunnel,
    /// The tunnel died before the response head arrived.
    TunnelLost,
    /// The agent could not reach its local service.
    UpstreamUnreachable,
    /// No response head within the relay's request timeout.
    Timeout,
    /// The request matched none of the agent's routes.
    NoRoute,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::NoRouteHeader,
        ErrorCode::BadId,
        ErrorCode::NoTunnel,
        ErrorCode::TunnelLost,
        ErrorCode::UpstreamUnreachable,
        ErrorCode::Timeout,
        ErrorCode::NoRoute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NoRouteHeader => "no-route-header",
            ErrorCode::BadId => "bad-id",
            ErrorCode::NoTunnel => "no-tunnel",
            ErrorCode::TunnelLost => "tunnel-lost",
            ErrorCode::UpstreamUnreachable => "upstream-unreachable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::NoRoute => "no-route",
        }
    }

    pub fn from_code(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::NoRouteHeader | ErrorCode::BadId => StatusCode::BAD_REQUEST,
            ErrorCode::NoTunnel => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TunnelLost | ErrorCode::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::NoRoute => StatusCode::NOT_FOUND,
        }
    }

    /// The JSON body for this error.
    pub fn body(self, detail: &str) -> String {
        serde_json::json!({ "error": self.as_str(), "detail": detail }).to_string()
    }

    /// A complete error response (status, `x-tether-error`, JSON body) with any body type
    /// that can be made from a `String`.
    pub fn response<B: From<String>>(self, detail: &str) -> http::Response<B> {
        http::Response::builder()
            .status(self.status())
            .header(ERROR_HEADER, self.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(B::from(self.body(detail)))
            .expect("static header values are valid")
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_have_the_documented_status() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::NoTunnel.status(), 503);
        assert_eq!(ErrorCode::Timeout.status(), 504);
        assert_eq!(ErrorCode::NoRoute.status(), 404);
    }

    #[test]
    fn response_carries_header_and_json_body() {
        let r: http::Response<String> = ErrorCode::BadId.response("x-node-id: \"A\"");
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()[ERROR_HEADER], "bad-id");
        let v: serde_json::Value = serde_json::from_str(r.body()).unwrap();
        assert_eq!(v["error"], "bad-id");
        assert_eq!(v["detail"], "x-node-id: \"A\"");
    }
}
