//! Layer 4: the outside world's ways in. gRPC (`grpc`: nodes and allocations;
//! `admin`: teams, quotas, tokens, reports), HTTP (`http`: health and
//! metrics), and the authorization every call passes (`auth`), over mutual TLS
//! (`tls`) with certificates from the broker's own CA when it has no other (`pki`). Services read
//! the state under its lock and send every change to the writer as a command.

pub mod admin;
pub mod auth;
pub mod grpc;
pub mod http;
pub mod pki;
pub mod tls;
