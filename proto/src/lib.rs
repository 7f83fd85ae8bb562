//! `tether-proto`: everything the relay and the agent must agree on.
//!
//! Nothing here does I/O beyond reading PEM files: the wire constants ([`wire`]), the
//! identity carried in agent certificates ([`identity`]), the HTTP headers the relay reads
//! and writes ([`headers`]), the error codes callers see ([`error_code`]) and the shared
//! TLS plumbing ([`tls`]).

pub mod admin;
pub mod alloc;
pub mod config;
pub mod congestion;
pub mod control;
pub mod enroll;
pub mod error_chain;
pub mod error_code;
pub mod h3body;
pub mod headers;
pub mod identity;
pub mod log_capture;
pub mod log_direct;
pub mod log_fields;
pub mod log_format;
pub mod log_time;
pub mod log_writer;
pub mod logging;
pub mod metrics;
pub mod runtime;
pub mod signals;
pub mod tls;
pub mod udp_socket;
pub mod wire;

pub use error_code::ErrorCode;
pub use identity::{Id, IdError, Identity};
