//! The command line: every subcommand's flags, parsed by clap. What each subcommand
//! does is one function in [`crate::commands`], which takes these structs.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::environment;
use crate::k8s::manifests::Images;

#[derive(Parser, Debug)]
#[command(
    name = "lab",
    version,
    about = "Measures every build in matrix.toml and reports max QPS and p99."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Validates the matrix and the selection; starts nothing.
    Validate(MatrixArgs),
    /// Creates the schema and seeds users into --database-url, gives the app's
    /// least-privileged role a fresh password, and prints the URL the server should
    /// connect with on stdout.
    Seed(SeedArgs),
    /// Runs the matrix (use ./scripts/run-matrix.sh, which passes its flags here).
    Run(Box<RunArgs>),
    /// One build at a share of its capacity for a long time (use ./scripts/soak.sh):
    /// memory, errors and p99 per interval, then a per-id write check.
    Soak(SoakArgs),
    /// Builds and checks the images of the selected rows and the load generator's.
    Images(ImagesArgs),
    /// Inside the load-generator Job (Kubernetes): measures one row against --url as the
    /// plan says and prints one result line for the runner.
    #[command(hide = true)]
    Loadgen(LoadgenArgs),
    /// Prints the load generator's plan for the first selected row (what a Job reads).
    #[command(hide = true)]
    Plan(MatrixArgs),
    /// Reads a load-generator log back as the Kubernetes run does and writes
    /// results.md, the charts and the summary from it (for the container test).
    #[command(hide = true)]
    Ingest(IngestArgs),
    /// Checks that a run produced results.md and a README table with numbers for every row.
    #[command(hide = true)]
    Verify(VerifyArgs),
    /// Adds up the `test result:` lines of cargo test output (for scripts/test.sh).
    #[command(hide = true)]
    TestTotals(TestTotalsArgs),
    /// Compares two runs (folders or summary.json files) row by row: capacity and CPU per
    /// request, each change judged significant or within noise. Exits 3 when a row got
    /// significantly worse by more than --fail-above percent.
    Compare(CompareArgs),
    /// The repeatability of runs: per row and workload, how far the repetitions spread.
    Repeatability(RepeatabilityArgs),
    /// Redraws results.md, the charts, results.csv and (with --readme) the README's
    /// table from a run's summary.json and steps, without measuring anything.
    Render(RenderArgs),
    /// Prints how many ns a fixed CPU loop takes per thousand iterations here, and how
    /// many ns a random memory read takes (the run calls it pinned to each CPU before
    /// every search, to see the machine's speed).
    #[command(hide = true)]
    Calibrate,
    /// Puts back what a run against your --database-url changed, from its journal
    /// (scripts/run-matrix.sh calls it on exit; nothing to do without a journal).
    #[command(hide = true)]
    Restore(RestoreArgs),
}

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// The baseline run: a results/<stamp> folder or its summary.json.
    pub old: PathBuf,
    /// The run to judge.
    pub new: PathBuf,
    /// A significant change for the worse beyond this percentage fails the comparison.
    #[arg(long, default_value_t = 5.0, value_name = "PCT")]
    pub fail_above: f64,
    /// A change under this percentage is noise however tight the ranges: the machine
    /// drifts between runs (two runs of one commit here differed by up to 26%).
    #[arg(long, default_value_t = crate::compare::NOISE_FLOOR_PCT, value_name = "PCT")]
    pub noise_floor: f64,
}

#[derive(Args, Clone, Debug)]
pub struct RenderArgs {
    /// The run: a results/<stamp> folder (holding summary.json and steps.json[.gz]).
    pub run: PathBuf,
    /// Where results.md and the charts go (default: where the run wrote them, the
    /// repository's root for matrix.toml and results/<name>/ for another matrix file).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The README whose results block to replace.
    #[arg(long)]
    pub readme: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct RepeatabilityArgs {
    /// Runs: results/<stamp> folders or summary.json files.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct MatrixArgs {
    /// The matrix file.
    #[arg(long, default_value = "matrix.toml")]
    pub matrix: PathBuf,
    /// Measure only this row (by name or file name); repeatable.
    #[arg(long = "only", value_name = "ROW")]
    pub only: Vec<String>,
    /// Short durations and one repetition: a smoke run, not for publishing.
    #[arg(long)]
    pub quick: bool,
    /// Study: the length of each measured step, in seconds, instead of the matrix's.
    #[arg(long, value_name = "SECS")]
    pub step_secs: Option<f64>,
    /// Study: the common rate instead of the matrix's (0: no common-rate window).
    #[arg(long, value_name = "QPS")]
    pub common_qps: Option<f64>,
    /// Study: leave out the reference line (pgbench).
    #[arg(long)]
    pub no_reference: bool,
}

impl MatrixArgs {
    /// A smoke run, some rows only, or a study's overrides: not the matrix as committed.
    pub fn is_trial(&self) -> bool {
        self.quick
            || !self.only.is_empty()
            || self.step_secs.is_some()
            || self.common_qps.is_some()
            || self.no_reference
    }
}

#[derive(Args, Clone, Debug)]
pub struct ImageArgs {
    /// Registry in the image names (`REG/perflab-server:<commit>-<features>`; default
    /// localhost).
    #[arg(long)]
    pub registry: Option<String>,
    /// docker, buildah, or auto (docker when its daemon answers; the default).
    #[arg(long, value_parser = ["docker", "buildah", "auto"])]
    pub engine: Option<String>,
    /// The oha binary (for the load-generator image, and the local target's load).
    #[arg(long, default_value = "oha")]
    pub oha: PathBuf,
}

impl ImageArgs {
    /// The registry given, else localhost.
    pub fn registry(&self) -> String {
        self.registry.clone().unwrap_or_else(|| "localhost".into())
    }

    /// The engine given, else auto.
    pub fn engine(&self) -> String {
        self.engine.clone().unwrap_or_else(|| "auto".into())
    }

    pub fn images(&self, root: &std::path::Path) -> Images {
        Images {
            registry: self.registry(),
            commit: environment::commit(root).tag(),
            postgres: None,
        }
    }

    /// The oha binary: a path as given, a bare name looked up on PATH.
    pub fn oha(&self) -> Result<PathBuf> {
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

#[derive(Args, Clone, Debug)]
pub struct SeedArgs {
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// How many users; default: the matrix's (with --quick, its quick count).
    #[arg(long)]
    pub users: Option<i64>,
    #[command(flatten)]
    pub m: MatrixArgs,
    /// Leave out the index on users.id (the benchmark's naive baseline).
    #[arg(long)]
    pub no_index: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetName {
    /// This machine, with a throwaway PostgreSQL (or --database-url).
    Local,
    /// The cluster KUBECONFIG points at.
    K8s,
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub m: MatrixArgs,
    /// Where to run.
    #[arg(long, value_enum, default_value = "local")]
    pub target: TargetName,
    /// Where results.md, the charts (results-*.svg) and results/<timestamp>/ go
    /// (default: the repository's root for matrix.toml, results/<name>/ for any other
    /// matrix file, e.g. results/matrix-peers/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The README whose results block is replaced (default: the repository's README.md
    /// when --out is not given or is the root, else none). Each matrix file has a block
    /// of its own.
    #[arg(long)]
    pub readme: Option<PathBuf>,
    /// Write a trial run (--quick, --only or a study flag) to the published places
    /// (results.md, the charts, the README block); without it such a run writes under
    /// target/lab-runs/ and leaves them alone.
    #[arg(long)]
    pub publish: bool,
    #[command(flatten)]
    pub img: ImageArgs,
    /// Measure a service that is already running at this URL (`http://host:port`)
    /// instead of the matrix's rows, with the matrix's load and workloads: nothing is
    /// built, started or seeded. Its database must hold the users 1..`[load] users`
    /// (10,000 with --quick; `lab seed` makes them), and the load PATCHes their emails.
    /// With --database-url (that database, read only), every PATCH is checked per id.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// local: a superuser URL of the PostgreSQL to use. The run works in a database
    /// of its own there, which it drops at the end, and puts back what it changed
    /// (`--check` lists it). Also read from PERFLAB_DATABASE_URL, which keeps a
    /// password off the command line (where `ps` shows it).
    #[arg(long, env = "PERFLAB_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// local, with your --database-url: let the run change the server's settings (the
    /// matrix's [postgres], with ALTER SYSTEM); they are put back at the end.
    #[arg(long)]
    pub allow_settings: bool,
    /// local: --database-url is a throwaway cluster of scripts/run-matrix.sh's own
    /// (nothing in it needs putting back).
    #[arg(long, hide = true)]
    pub own_cluster: bool,
    /// local, with your --database-url: where the run notes what to put back
    /// (scripts/run-matrix.sh gives one and restores from it on exit; default
    /// target/lab-sandbox-<pid>.json).
    #[arg(long, hide = true)]
    pub journal: Option<PathBuf>,
    /// local: the data directory of a cluster on this machine (pins it, counts its CPU).
    #[arg(long)]
    pub pg_data: Option<PathBuf>,
    /// k8s: render and check every overlay and print every command, without building
    /// images or touching a cluster.
    #[arg(long)]
    pub dry_run: bool,
    /// k8s: load the images into a local cluster instead of pushing.
    #[arg(long, value_parser = ["kind", "k3d", "minikube"])]
    pub load: Option<String>,
    /// k8s: the namespace to run in (default perflab). One the lab did not make is used
    /// as it is and never deleted; one it makes is deleted at the end of each row.
    #[arg(long)]
    pub namespace: Option<String>,
    /// k8s: PostgreSQL's image instead of the pinned one (postgres:15.18-bookworm); it
    /// must be pinned too (a digest, or a tag that is not `latest` or a bare major).
    #[arg(long, value_name = "IMAGE")]
    pub postgres_image: Option<String>,
    /// k8s: where the generated overlays go (ignored by git).
    #[arg(long, default_value = "target/k8s")]
    pub overlays: PathBuf,
    /// k8s: upper bound of each wait for a rollout or the seed Job, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Only check the matrix, the selection and the flags; start nothing.
    #[arg(long)]
    pub check: bool,
    /// Print the run's summary (summary.json's content) on stdout when it is done.
    #[arg(long)]
    pub json: bool,
    /// Profile the server (local target): after each row and workload's common-rate
    /// window, in the first repetition, a second window at the same rate runs with
    /// `perf record -g` on the server; a flame graph per row and workload goes to
    /// results/<run>/, with system calls and context switches per request.
    #[arg(long)]
    pub profile: bool,
    /// After the run, compare it with this earlier run (a results/<stamp> folder or its
    /// summary.json), as `lab compare` does; exit 3 on a significant regression.
    #[arg(long, value_name = "OLD")]
    pub compare: Option<PathBuf>,
    /// With --compare: a significant change for the worse beyond this percentage is a
    /// regression.
    #[arg(long, default_value_t = 5.0, value_name = "PCT")]
    pub fail_above: f64,
    /// With --compare: a change under this percentage is noise between runs.
    #[arg(long, default_value_t = crate::compare::NOISE_FLOOR_PCT, value_name = "PCT")]
    pub noise_floor: f64,
}

#[derive(Args, Clone, Debug)]
pub struct SoakArgs {
    /// The matrix file (its load, pinning and PostgreSQL settings apply).
    #[arg(long, default_value = "matrix.toml")]
    pub matrix: PathBuf,
    /// The row to soak (name or file name); default: the row with the most features.
    #[arg(long)]
    pub row: Option<String>,
    /// The workload; default: the matrix's first.
    #[arg(long)]
    pub workload: Option<String>,
    /// How long to soak, e.g. 10m, 1h.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Length of one reported interval.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// Share of the capacity (searched first on this machine) to offer.
    #[arg(long, default_value_t = 0.7)]
    pub share: f64,
    /// Offer this rate (requests/s) instead of searching the capacity first.
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long)]
    pub database_url: String,
    /// The data directory of a cluster on this machine: pins it and counts its CPU.
    #[arg(long)]
    pub pg_data: Option<PathBuf>,
    /// Where soak.md, soak.json and the server's log go.
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
    #[arg(long, default_value = "oha")]
    pub oha: PathBuf,
}

#[derive(Args, Clone, Debug)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub m: MatrixArgs,
    #[command(flatten)]
    pub img: ImageArgs,
    /// Fail when the server image is larger than this many MB.
    #[arg(long)]
    pub max_server_mb: Option<f64>,
    /// Print only the image names on stdout: the server's, then the load generator's
    /// (the table goes to stderr).
    #[arg(long)]
    pub names_only: bool,
}

#[derive(Args, Clone, Debug)]
pub struct LoadgenArgs {
    /// The server under test, `http://host:port`.
    #[arg(long)]
    pub url: String,
    #[arg(long, default_value = crate::k8s::loadgen::default_plan().as_os_str())]
    pub plan: PathBuf,
    #[arg(long, default_value = "oha")]
    pub oha: PathBuf,
    /// A writable folder for oha's inputs and outputs.
    #[arg(long, default_value = "/work")]
    pub work: PathBuf,
    /// How long to wait for the server to resolve and be ready.
    #[arg(long, default_value_t = 300)]
    pub ready_timeout_secs: u64,
}

#[derive(Args, Clone, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub m: MatrixArgs,
    /// The load generator's stdout.
    #[arg(long)]
    pub log: PathBuf,
    /// Increase of sum(version) in the database over the whole Job.
    #[arg(long)]
    pub applied: i64,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Clone, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub m: MatrixArgs,
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    #[arg(long)]
    pub readme: Option<PathBuf>,
    /// The run was made with --profile: every row and workload must have a flame graph.
    #[arg(long)]
    pub profiled: bool,
    /// A row that must have been reported as failed, with a reason containing
    /// `--failed-because` (repeatable); the others must have numbers.
    #[arg(long)]
    pub expect_failed: Vec<String>,
    /// What the reason of every `--expect-failed` row must say.
    #[arg(long, default_value = "the contract probe failed")]
    pub failed_because: String,
    /// The run measured a service by URL (`lab run --url`): its one row, not the matrix's.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The run measured randomized blocks (a local run of a matrix with `[blocks]`):
    /// results.md must link the headline chart. Without it, the chart is checked only
    /// where results.md links it (targets that measure no blocks draw none).
    #[arg(long)]
    pub blocks: bool,
    /// A row that must have run in a PostgreSQL cluster of its own (its server
    /// settings need one; repeatable).
    #[arg(long, value_name = "ROW")]
    pub expect_own_cluster: Vec<String>,
}

#[derive(Args, Clone, Debug)]
pub struct RestoreArgs {
    /// The journal of the run to undo (nothing to do if it does not exist).
    #[arg(long)]
    pub journal: PathBuf,
}

#[derive(Args, Clone, Debug)]
pub struct TestTotalsArgs {
    /// The saved output of the cargo test runs.
    pub log: PathBuf,
    /// Passed checks to add that are not cargo tests (end-to-end steps).
    #[arg(long, default_value_t = 0)]
    pub extra: u64,
}
