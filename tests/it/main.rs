//! The integration tests, as one binary: librdkafka and OpenSSL are linked
//! once, and the shared harness and provider stand-ins compile once.
//!
//! Each module is one area, in the order an event travels: the seeds and the
//! ingest endpoint, the worker against the provider stand-ins, each target
//! on its own (breaker, catch-up, renewal, rewind; Tencent and Agora in
//! `im_targets`, against their stand-ins), the mute state and its
//! guard, the command line, and the deployment bundle checked with the
//! real tools.

mod cli;
mod deploy;
mod docs;
mod easemob_rest;
mod fixtures;
mod hardening;
mod held;
mod im_targets;
mod ingest;
mod providers;
mod providers_agora;
mod providers_tencent;
mod ratelimit;
mod reconcile;
mod seeds;
mod state;
mod support;
mod targets;
mod verify;
mod worker;
