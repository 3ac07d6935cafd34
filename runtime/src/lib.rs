//! Skiff's Wasm runtime: the engine, the sandbox and its limits, serving
//! `wasi:http` components, and the app manifest.
//!
//! The flow of `skiff run`: [`Manifest`] parses `skiff.toml`;
//! [`SkiffEngine`] holds the one wasmtime engine; [`LoadedApp`] compiles
//! (through the [`CompileCache`]) and links each component; [`Server`]
//! accepts HTTP and [`invoke`] runs each request in a fresh instance.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod app;
pub mod body_limit;
pub mod cache;
pub mod capability;
pub mod component;
pub mod cpu_lane;
pub mod domain;
pub mod engine;
pub mod fd_limit;
pub mod instance;
pub mod invoke;
pub mod limits;
pub mod manifest;
pub mod mesh;
pub mod metrics;
pub mod otlp;
pub mod outcomes;
pub mod package;
mod prepared;
pub mod pressure;
pub mod printable;
pub mod reaper;
pub mod reservation;
pub mod route;
pub mod server;

pub use app::LoadedApp;
pub use cache::{CacheOutcome, CompileCache};
pub use component::{LoadError, LoadedComponent};
pub use engine::{EngineConfig, SkiffEngine};
pub use invoke::invoke;
pub use manifest::{Manifest, ManifestError};
pub use server::{ServeError, Server};
