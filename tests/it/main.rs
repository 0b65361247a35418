//! The integration tests, as one binary (`cargo test --test it`): each module is one area,
//! and `support` is the harness they share. Data lives beside this directory, in
//! `tests/fixtures/` and `tests/fuzz_regressions/`.

mod support;

mod admin;
mod backends;
mod cli;
mod closing;
mod config;
mod deflate;
mod edge_refusals;
mod fair;
mod faults;
mod forward_auth;
mod fuzz_regressions;
mod h2;
mod hibernate;
mod http_proxy;
mod jwt;
mod limits;
mod listeners;
mod logs;
mod path;
mod policy;
mod proxy;
mod proxy_protocol;
mod relay;
mod reload;
mod scanner;
mod shutdown;
mod tls;
mod upgrade;
mod workers;
