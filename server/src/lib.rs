//! The `lantern` server as a library: the binary (`main.rs`) parses the command line and runs
//! one of its commands; tests build the HTTP router in-process (`http::router`) around a
//! loaded model.

pub mod adapters;
pub mod benchmark;
pub mod cli;
pub mod config;
pub mod connections;
pub mod data_parallel;
pub mod default_model;
pub mod emf;
pub mod http;
pub mod metrics;
pub mod selftest;
pub mod serve;
pub mod vllm_metrics;
