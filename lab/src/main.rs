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
mod k8s;
mod loadgen;
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
    /// The Kubernetes target: generates, renders and checks one overlay per row, and
    /// prints every command of the run (only --dry-run exists yet).
    K8s {
        #[command(flatten)]
        m: MatrixArgs,
        /// Print the commands and render the manifests without touching a cluster.
        #[arg(long)]
        dry_run: bool,
        /// Registry the images are pushed to (`REG/perflab-server:<commit>-<features>`).
        #[arg(long, default_value = "localhost")]
        registry: String,
        /// Load the images into a local cluster instead of pushing: kind, k3d or minikube.
        #[arg(long, value_parser = ["kind", "k3d", "minikube"])]
        load: Option<String>,
        /// Where the generated overlays go (ignored by git).
        #[arg(long, default_value = "target/k8s")]
        out: PathBuf,
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
        Cmd::K8s {
            m,
            dry_run,
            registry,
            load,
            out,
        } => {
            let matrix = load_matrix(&m)?;
            let root = repo_root()?;
            let out = if out.is_absolute() {
                out
            } else {
                root.join(out)
            };
            k8s_plan(
                &root,
                &matrix,
                &m,
                dry_run,
                &registry,
                load.as_deref(),
                &out,
            )
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

fn k8s_plan(
    root: &std::path::Path,
    matrix: &matrix::Matrix,
    m: &MatrixArgs,
    dry_run: bool,
    registry: &str,
    load: Option<&str>,
    out: &std::path::Path,
) -> Result<bool> {
    if !dry_run {
        bail!("the live Kubernetes run is not built yet: use --dry-run to render, check and print the whole run");
    }
    let images = k8s::Images {
        registry: registry.to_string(),
        commit: environment::git_commit(root).replace("+uncommitted changes", "-dirty"),
    };
    let l = &matrix.load;
    let mut args: Vec<String> = vec![
        "--users".into(),
        l.users.to_string(),
        "--duration-secs".into(),
        l.duration_secs.to_string(),
        "--slo-p99-ms".into(),
        l.slo_p99_ms.to_string(),
        "--connections".into(),
        l.connections.to_string(),
    ];
    for w in &matrix.workloads {
        args.push("--workload".into());
        args.push(format!("{}={}/{}", w.name, w.get_percent, w.patch_percent));
    }
    if m.quick {
        args.push("--quick".into());
    }
    let say = |cmd: String| println!("+ {cmd}");
    say(format!("cargo build --release --locked -p lab  # then: buildah bud -t {} -f k8s/images/Containerfile.loadgen .", images.loadgen()));
    for row in &matrix.rows {
        let dir = k8s::write_overlay(root, out, matrix, row, &images, &args)?;
        let yaml = k8s::render(&dir)?;
        std::fs::write(dir.join("rendered.yaml"), &yaml)?;
        k8s::check_rendered(&yaml, row, &images).with_context(|| format!("row {:?}", row.name))?;
        let image = images.server(row);
        println!(
            "# row {:?} ({}): overlay {}, rendered and checked",
            row.name,
            row.features_label(),
            dir.display()
        );
        let features = if row.features.is_empty() {
            String::new()
        } else {
            format!(" --features {}", row.features.join(","))
        };
        say(format!(
            "cargo build --release --locked -p perflab{features}  # static binary for the image"
        ));
        say(format!(
            "buildah bud --layers -f k8s/images/Containerfile.server -t {image} ."
        ));
        match load {
            Some("kind") => say(format!("buildah push {image} oci-archive:target/k8s/image.tar && kind load image-archive target/k8s/image.tar")),
            Some("k3d") => say(format!("buildah push {image} docker-archive:target/k8s/image.tar && k3d image import target/k8s/image.tar")),
            Some(_) => say(format!("minikube image load {image}")),
            None => say(format!("buildah push {image}")),
        }
        let ns = "kubectl -n perflab";
        say(format!(
            "{ns} delete job perflab-seed perflab-loadgen --ignore-not-found --wait"
        ));
        say(format!("kubectl apply -k {}", dir.display()));
        say(format!(
            "{ns} rollout status statefulset/postgres --timeout=300s"
        ));
        say(format!(
            "{ns} rollout status deployment/perflab --timeout=300s"
        ));
        say(format!("{ns} port-forward deploy/perflab 18080:8080 & curl -fsS http://127.0.0.1:18080/version  # must list exactly: {}", row.features_label()));
        say(format!("{ns} wait job/perflab-seed --for=jsonpath='{{.status.conditions[?(@.status==\"True\")].type}}' --timeout=600s  # Complete or Failed, never waits out a failure"));
        say(format!("{ns} wait job/perflab-loadgen --for=jsonpath='{{.status.conditions[?(@.status==\"True\")].type}}' --timeout=3600s"));
        say(format!(
            "{ns} logs job/perflab-loadgen > results/<timestamp>/{}-loadgen.json",
            row.slug()
        ));
        say(format!(
            "kubectl delete -k {} --wait  # tear the row down",
            dir.display()
        ));
    }
    println!(
        "# {} rows rendered and checked into {}",
        matrix.rows.len(),
        out.display()
    );
    Ok(true)
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
