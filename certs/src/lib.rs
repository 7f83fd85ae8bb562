//! `tether-certs` as a library: the private CA and the certificates it issues.
//!
//! The CLI (`main.rs`) is a thin shell over this so that the relay can later sign
//! enrollment requests with exactly the same profile.

pub mod ca;
pub mod files;
pub mod inspect;
pub mod revocation;
pub mod tokens;

pub use ca::{Ca, IssuedCert};
