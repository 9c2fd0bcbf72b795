//! authcode-vault's server: a gRPC vault for mail-provider client auth codes.
//!
//! A request flows handler ([`grpc`]) → domain service ([`vault`]) → provider registry
//! ([`provider`]) and login probe ([`probe`]) → encrypted store ([`crypto`], [`store`]).

/// Bearer tokens: the token table, authentication and bad-token throttling.
pub mod auth;
/// Who a caller is, what it may do, why a call was refused (a leaf).
pub mod caller;
/// The command line.
pub mod cli;
/// Wall-clock time, injectable (a leaf).
pub mod clock;
/// Envelope encryption: Argon2id KEK, DEK keyring, XChaCha20-Poly1305 codes.
pub mod crypto;
/// Creating and unlocking a data dir.
pub mod datadir;
/// Fuzz entry points (not an API).
#[doc(hidden)]
pub mod fuzzing;
/// gRPC handlers and the error-to-Status mapping.
pub mod grpc;
/// Process hygiene (no core dumps).
pub mod hygiene;
/// Canonical mailbox and client identifiers.
pub mod ids;
/// Opening a file a user names as input: a regular file or a pipe, never a device.
pub mod input_file;
/// Prometheus metrics and their endpoint.
pub mod metrics;
/// What a login probe found (a leaf type).
pub mod outcome;
/// Login probes against providers' IMAP servers.
pub mod probe;
/// Generated protobuf types and conversions.
pub mod proto;
/// Mail providers: servers, code formats, hints.
pub mod provider;
/// Spotting a secret echoed in free text.
pub mod redact;
/// Process start-up: passphrase input, dev mode, running the server.
pub mod run;
/// Secret-bearing types with redacted Debug.
pub mod secret;
/// Serving the gRPC API with health and reflection.
pub mod server;
/// Persistence behind a trait; SQLite today.
pub mod store;
/// The domain service.
pub mod vault;
