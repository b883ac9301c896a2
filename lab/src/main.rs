//! `lab`: the perflab harness. `./scripts/run-matrix.sh` is its thin entry point.
//!
//! Modules: [`matrix`] (matrix.toml), [`search`] (rate search), [`measure`] (step verdicts
//! and integrity), [`oha`] (driving the load generator), [`stats`] (merged percentiles),
//! [`procfs`] (CPU accounting), [`server`] (building and running a row's server),
//! [`pg`] (seeding and settings), [`pgbench`] (the database's own ceiling),
//! [`results`]/[`report`] (summary, tables, README, chart), [`runner`] (one local run).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod environment;
mod http;
mod matrix;
mod measure;
mod oha;
mod pg;
mod pgbench;
mod procfs;
mod report;
mod results;
mod runner;
mod search;
mod server;
mod stats;

#[derive(Parser)]
#[command(
    name = "lab",
    version,
    about = "Measures every build in matrix.toml and reports max QPS and p99."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct MatrixArgs {
    /// The matrix file.
    #[arg(long, default_value = "matrix.toml")]
    matrix: PathBuf,
    /// Measure only this row (by name or file name); repeatable.
    #[arg(long = "only", value_name = "ROW")]
    only: Vec<String>,
    /// Short durations and one repetition: a smoke run, not for publishing.
    #[arg(long)]
    quick: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validates the matrix and the selection; starts nothing.
    Validate {
        #[command(flatten)]
        m: MatrixArgs,
    },
    /// Creates the schema and seeds N users into DATABASE_URL (or --database-url).
    Seed {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long, default_value_t = 100_000)]
        users: i64,
        /// Leave out the index on users.id (the benchmark's naive baseline).
        #[arg(long)]
        no_index: bool,
    },
    /// Runs the matrix on the local target (use ./scripts/run-matrix.sh).
    Run {
        #[command(flatten)]
        m: MatrixArgs,
        #[arg(long)]
        database_url: String,
        /// The data directory of a cluster on this machine: pins it and counts its CPU.
        #[arg(long)]
        pg_data: Option<PathBuf>,
        /// Where results.md, results.svg and results/<timestamp>/ go.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The README whose results block is replaced.
        #[arg(long)]
        readme: Option<PathBuf>,
        #[arg(long, default_value = "oha")]
        oha: PathBuf,
    },
    /// Checks that a run produced results.md and a README table with numbers for every row.
    Verify {
        #[command(flatten)]
        m: MatrixArgs,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long)]
        readme: Option<PathBuf>,
    },
}

fn load_matrix(m: &MatrixArgs) -> Result<matrix::Matrix> {
    let mut matrix = matrix::Matrix::load_file(&m.matrix)?;
    matrix.select(&m.only)?;
    if m.quick {
        matrix.quick();
    }
    Ok(matrix)
}

fn repo_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("lab/ has no parent directory")
}

fn real_main() -> Result<bool> {
    match Cli::parse().command {
        Cmd::Validate { m } => {
            let matrix = load_matrix(&m)?;
            eprintln!(
                "{}: {} rows × {} workloads × {} repetitions: ok",
                m.matrix.display(),
                matrix.rows.len(),
                matrix.workloads.len(),
                matrix.load.repetitions
            );
            Ok(true)
        }
        Cmd::Seed {
            database_url,
            users,
            no_index,
        } => {
            if users < 1 {
                bail!("--users must be at least 1");
            }
            let mut client = pg::connect(&database_url)?;
            let took = pg::seed(&mut client, users, !no_index)?;
            eprintln!(
                "seeded {users} users (index: {}) in {:.2} s",
                !no_index,
                took.as_secs_f64()
            );
            Ok(true)
        }
        Cmd::Run {
            m,
            database_url,
            pg_data,
            out,
            readme,
            oha,
        } => {
            let matrix = load_matrix(&m)?;
            std::fs::create_dir_all(&out)?;
            let options = runner::Options {
                root: repo_root()?,
                matrix_path: m.matrix.clone(),
                matrix,
                quick: m.quick,
                out,
                readme,
                database_url,
                pg_data,
                oha,
            };
            let summary = runner::run(&options)?;
            let failures = summary.integrity_failures();
            let failed_rows: Vec<&str> = summary
                .rows
                .iter()
                .filter(|r| !r.failures.is_empty())
                .map(|r| r.name.as_str())
                .collect();
            if !failures.is_empty() {
                eprintln!(
                    "!!! INTEGRITY FAILURES ({}): see results.md",
                    failures.len()
                );
            }
            if !failed_rows.is_empty() {
                eprintln!(
                    "!!! rows that could not be measured: {}",
                    failed_rows.join(", ")
                );
            }
            Ok(failures.is_empty() && failed_rows.is_empty())
        }
        Cmd::Verify { m, out, readme } => {
            let matrix = load_matrix(&m)?;
            let names: Vec<String> = matrix.rows.iter().map(|r| r.name.clone()).collect();
            let md = std::fs::read_to_string(out.join("results.md"))
                .context("results.md was not written")?;
            report::check_table(&md, &names, matrix.workloads.len()).context("results.md")?;
            if !md.contains("All checks passed") {
                bail!("results.md does not report passing integrity checks");
            }
            if let Some(readme) = readme {
                let text = std::fs::read_to_string(&readme)?;
                let (Some(b), Some(e)) = (text.find(report::BEGIN), text.find(report::END)) else {
                    bail!("{} has no results block", readme.display());
                };
                report::check_table(&text[b..e], &names, matrix.workloads.len())
                    .context("README table")?;
            }
            let svg = std::fs::read_to_string(out.join("results.svg"))
                .context("results.svg was not written")?;
            if !svg.starts_with("<svg") {
                bail!("results.svg is not an SVG");
            }
            eprintln!(
                "verified: {} rows with numbers for {} workloads",
                names.len(),
                matrix.workloads.len()
            );
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
