//! The perflab harness. The experiment is written once and runs on either target:
//!
//! - [`experiment`]: the run itself (repetitions × rows, hints, PostgreSQL settings,
//!   failures, the environment record, the outputs) and the [`experiment::Target`]
//!   trait a target implements;
//! - [`measure`]: what both targets measure with: the search of a row and workload,
//!   step verdicts and write integrity, oha, merged percentiles, CPU from /proc, the
//!   server as seen over HTTP;
//! - [`local`]: this machine (builds, a pinned server and PostgreSQL, pgbench, the soak);
//! - [`k8s`]: a cluster (images, manifests, the load-generator Job and its side);
//! - [`matrix`] (matrix.toml), [`results`] (the summary), [`report`] (results.md, the
//!   README table, the CSV), [`charts`] (the four SVG charts), [`sql`] (the schema and role both targets seed),
//!   [`environment`] (facts about this machine and repository);
//! - [`compare`]: two runs side by side, and the repeatability of runs;
//! - [`cli`] and [`commands`]: the command line, one function per subcommand.
pub mod blocks;
pub mod charts;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod environment;
pub mod experiment;
pub mod k8s;
pub mod local;
pub mod matrix;
pub mod measure;
pub mod pod;
pub mod report;
pub mod results;
pub mod scale;
pub mod service;
pub mod sql;
