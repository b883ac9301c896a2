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

mod driver;
mod environment;
mod http;
mod images;
mod k8s;
mod k8s_run;
mod loadgen;
mod matrix;
mod measure;
mod oha;
mod pg;
mod pgbench;
mod ports;
mod procfs;
mod report;
mod results;
mod runner;
mod search;
mod server;
mod shell;
mod soak;
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

#[derive(clap::Args, Clone)]
struct ImageArgs {
    /// Registry in the image names (`REG/perflab-server:<commit>-<features>`).
    #[arg(long, default_value = "localhost")]
    registry: String,
    /// docker, buildah, or auto (docker when its daemon answers).
    #[arg(long, default_value = "auto")]
    engine: String,
    /// The oha binary for the load-generator image.
    #[arg(long, default_value = "oha")]
    oha: PathBuf,
}

impl ImageArgs {
    fn images(&self, root: &std::path::Path) -> k8s::Images {
        k8s::Images {
            registry: self.registry.clone(),
            commit: environment::git_commit(root).replace("+uncommitted changes", "-dirty"),
        }
    }
    fn oha(&self) -> Result<PathBuf> {
        if self.oha.components().count() > 1 {
            return Ok(self.oha.clone());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(&self.oha))
            .find(|p| p.is_file())
            .with_context(|| format!("{} not found on PATH", self.oha.display()))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Validates the matrix and the selection; starts nothing.
    Validate {
        #[command(flatten)]
        m: MatrixArgs,
    },
    /// Creates the schema and seeds N users into DATABASE_URL (or --database-url), gives
    /// the app's least-privileged role a fresh password, and prints the URL the server
    /// should connect with on stdout.
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
    /// One build at a share of its capacity for a long time (use ./scripts/soak.sh):
    /// memory, errors and p99 per interval, then a per-id write check.
    Soak {
        /// The matrix file (its load, pinning and PostgreSQL settings apply).
        #[arg(long, default_value = "matrix.toml")]
        matrix: PathBuf,
        /// The row to soak (name or file name); default: the row with the most features.
        #[arg(long)]
        row: Option<String>,
        /// The workload; default: the matrix's first.
        #[arg(long)]
        workload: Option<String>,
        /// How long to soak, e.g. 10m, 1h.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Length of one reported interval.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Share of the capacity (searched first on this machine) to offer.
        #[arg(long, default_value_t = 0.7)]
        share: f64,
        /// Offer this rate (requests/s) instead of searching the capacity first.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long)]
        database_url: String,
        /// The data directory of a cluster on this machine: pins it and counts its CPU.
        #[arg(long)]
        pg_data: Option<PathBuf>,
        /// Where soak.md, soak.json and the server's log go.
        #[arg(long, default_value = "target/soak")]
        out: PathBuf,
        #[arg(long, default_value = "oha")]
        oha: PathBuf,
    },
    /// The Kubernetes target: generates, renders and checks one overlay per row, and
    /// prints every command of the run (only --dry-run exists yet).
    K8s {
        #[command(flatten)]
        m: MatrixArgs,
        #[command(flatten)]
        img: ImageArgs,
        /// Print the commands and render the manifests without touching a cluster.
        #[arg(long)]
        dry_run: bool,
        /// Load the images into a local cluster instead of pushing: kind, k3d or minikube.
        #[arg(long, value_parser = ["kind", "k3d", "minikube"])]
        load: Option<String>,
        /// Where the generated overlays go (ignored by git).
        #[arg(long, default_value = "target/k8s")]
        overlays: PathBuf,
        /// Where results.md, results.svg and results/<timestamp>/ go.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The README whose results block is replaced.
        #[arg(long)]
        readme: Option<PathBuf>,
        /// Upper bound of each wait for a rollout or the seed Job, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Builds and checks the images of the selected rows and the load generator's.
    Images {
        #[command(flatten)]
        m: MatrixArgs,
        #[command(flatten)]
        img: ImageArgs,
    },
    /// Inside the load-generator Job (Kubernetes): measures one row against --url as the
    /// plan says and prints one result line for the runner.
    Loadgen {
        /// The server under test, `http://host:port`.
        #[arg(long)]
        url: String,
        #[arg(long, default_value = loadgen::default_plan().as_os_str())]
        plan: PathBuf,
        #[arg(long, default_value = "oha")]
        oha: PathBuf,
        /// A writable folder for oha's inputs and outputs.
        #[arg(long, default_value = "/work")]
        work: PathBuf,
        /// How long to wait for the server to resolve and be ready.
        #[arg(long, default_value_t = 300)]
        ready_timeout_secs: u64,
    },
    /// Prints the load generator's plan for the first selected row (what a Job reads).
    Plan {
        #[command(flatten)]
        m: MatrixArgs,
    },
    /// Reads a load-generator log back as the Kubernetes run does and writes
    /// results.md, results.svg and the summary from it (for the container test).
    Ingest {
        #[command(flatten)]
        m: MatrixArgs,
        /// The load generator's stdout.
        #[arg(long)]
        log: PathBuf,
        /// Increase of sum(version) in the database over the whole Job.
        #[arg(long)]
        applied: i64,
        #[arg(long)]
        out: PathBuf,
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
            println!("{}", pg::app_login(&mut client, &database_url)?);
            Ok(true)
        }
        Cmd::Soak {
            matrix,
            row,
            workload,
            duration,
            interval,
            share,
            rate,
            database_url,
            pg_data,
            out,
            oha,
        } => {
            let report = soak::run(&soak::Options {
                root: repo_root()?,
                matrix: matrix::Matrix::load_file(&matrix)?,
                row,
                workload,
                duration,
                interval,
                share,
                rate,
                database_url,
                pg_data,
                oha,
                out: out.clone(),
            })?;
            soak::write(&out, &report)?;
            print!("{}", soak::markdown(&report));
            eprintln!(
                "==> wrote {} and {}",
                out.join("soak.md").display(),
                out.join("soak.json").display()
            );
            Ok(report.passed)
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
            Ok(outcome(&runner::run(&options)?))
        }
        Cmd::K8s {
            m,
            img,
            dry_run,
            load,
            overlays,
            out,
            readme,
            timeout_secs,
        } => {
            let matrix = load_matrix(&m)?;
            let root = repo_root()?;
            let abs = |p: PathBuf| if p.is_absolute() { p } else { root.join(p) };
            let oha = if dry_run {
                img.oha().unwrap_or_else(|_| img.oha.clone())
            } else {
                img.oha()?
            };
            let summary = k8s_run::run(&k8s_run::Options {
                root: root.clone(),
                matrix_path: m.matrix.clone(),
                matrix,
                quick: m.quick,
                dry_run,
                registry: img.registry.clone(),
                load,
                engine: img.engine.clone(),
                overlays: abs(overlays),
                out: abs(out),
                readme: readme.map(abs),
                oha,
                timeout: std::time::Duration::from_secs(timeout_secs),
            })?;
            if dry_run {
                println!(
                    "# dry run: {} rows rendered, checked and planned; nothing was applied",
                    summary.rows.len()
                );
                return Ok(true);
            }
            Ok(outcome(&summary))
        }
        Cmd::Plan { m } => {
            let matrix = load_matrix(&m)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&k8s_run::plan(&matrix, 1)?)?
            );
            Ok(true)
        }
        Cmd::Ingest {
            m,
            log,
            applied,
            out,
        } => {
            let matrix = load_matrix(&m)?;
            let root = repo_root()?;
            let text = std::fs::read_to_string(&log)
                .with_context(|| format!("reading {}", log.display()))?;
            let report = loadgen::Report::from_log(&text)?;
            let rows = k8s_run::ingest(&matrix, report, applied)?;
            let summary = k8s_run::summary(
                &matrix,
                &root,
                &m.matrix,
                m.quick,
                "(container test)",
                0.0,
                rows,
            )?;
            let raw = out.join("results").join("ingested");
            std::fs::create_dir_all(&raw)?;
            runner::write_outputs(&out, None, &raw, &summary)?;
            let failures = summary.integrity_failures();
            for f in &failures {
                eprintln!("!!! integrity: {f}");
            }
            Ok(failures.is_empty())
        }
        Cmd::Images { m, img } => {
            let matrix = load_matrix(&m)?;
            let root = repo_root()?;
            let names = img.images(&root);
            let engine = images::Engine::choose(&img.engine)?;
            let sh = shell::Shell { dry_run: false };
            let mut tags = vec![];
            let tag = names.loadgen();
            let info = images::loadgen(&sh, engine, &root, &img.oha()?, &tag)?;
            tags.push((tag, info));
            for row in &matrix.rows {
                let tag = names.server(row);
                let info = images::server(&sh, engine, &root, row, &tag)?;
                tags.push((tag, info));
            }
            for (tag, i) in &tags {
                println!(
                    "{tag}\t{}\tuser {}\tentrypoint {}",
                    i.size, i.user, i.entrypoint
                );
            }
            Ok(true)
        }
        Cmd::Loadgen {
            url,
            plan,
            oha,
            work,
            ready_timeout_secs,
        } => {
            let report = loadgen::run(&loadgen::Options {
                url,
                plan,
                oha,
                work,
                ready_within: std::time::Duration::from_secs(ready_timeout_secs),
            })?;
            if let Some(e) = &report.error {
                eprintln!("!!! {e}");
            }
            Ok(report.error.is_none())
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

/// Says what went wrong in a run; true when every row was measured and every
/// integrity check passed.
fn outcome(summary: &results::Summary) -> bool {
    let failures = summary.integrity_failures();
    for f in &failures {
        eprintln!("!!! INTEGRITY FAILURE (see results.md): {f}");
    }
    let failed_rows: Vec<&str> = summary
        .rows
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| r.name.as_str())
        .collect();
    if !failed_rows.is_empty() {
        eprintln!(
            "!!! rows that could not be measured: {}",
            failed_rows.join(", ")
        );
    }
    failures.is_empty() && failed_rows.is_empty()
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
