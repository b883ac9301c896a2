//! One function per subcommand: what `main` dispatches to, and what a test can call.
//! Each returns `Ok(true)` when its checks passed, `Ok(false)` when it ran but found a
//! failure, and an error when it could not run; [`dispatch`] turns these into an
//! [`Outcome`] and its exit code.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::*;
use crate::experiment::{self, Experiment};
use crate::k8s::{self, images, loadgen, shell::Shell};
use crate::local::{self, pg, soak};
use crate::matrix::Matrix;
use crate::report;
use crate::results::{Host, Summary};

/// The matrix file with the selection and `--quick` applied.
pub fn load_matrix(m: &MatrixArgs) -> Result<Matrix> {
    let load = || -> Result<Matrix> {
        let mut matrix = Matrix::load_file(&m.matrix)?;
        matrix.select(&m.only)?;
        matrix.override_load(m.step_secs, m.common_qps, !m.no_reference)?;
        if m.quick {
            matrix.quick();
        }
        Ok(matrix)
    };
    load().map_err(usage)
}

/// An error in what was asked (a flag, the matrix file, a row's name): nothing ran, and
/// the command exits [`Outcome::USAGE`]. Every other error exits [`Outcome::FAILED`].
#[derive(Debug)]
pub struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Marks `e` as a usage error (its whole chain kept in the message).
pub fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Usage(format!("{e:#}")))
}

/// The exit code of a command that ended with `e`.
pub fn error_code(e: &anyhow::Error) -> u8 {
    if e.is::<Usage>() {
        Outcome::USAGE
    } else {
        Outcome::FAILED
    }
}

/// The repository: lab's parent folder.
pub fn repo_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("lab/ has no parent directory")
}

fn absolute(root: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

pub fn validate(m: &MatrixArgs) -> Result<bool> {
    let matrix = load_matrix(m)?;
    eprintln!(
        "{}: {} rows × {} workloads × {} repetitions: ok",
        m.matrix.display(),
        matrix.rows.len(),
        matrix.workloads.len(),
        matrix.load.repetitions
    );
    // The scripts prepare what the selected rows' peers need (their Python
    // environments): one "peer NAME" line on stdout per peers/NAME/ a command runs.
    let mut peers: Vec<&str> = matrix
        .rows
        .iter()
        .filter_map(|r| r.external.as_ref()?.peer())
        .collect();
    peers.sort_unstable();
    peers.dedup();
    for p in peers {
        println!("peer {p}");
    }
    Ok(true)
}

pub fn seed(a: &SeedArgs) -> Result<bool> {
    let users = match a.users {
        Some(n) => n,
        None => load_matrix(&a.m)?.load.users,
    };
    if users < 1 {
        bail!("--users must be at least 1");
    }
    let mut client = pg::connect(&a.database_url)?;
    let took = pg::seed(&mut client, users, !a.no_index)?;
    eprintln!(
        "seeded {users} users (index: {}) in {:.2} s",
        !a.no_index,
        took.as_secs_f64()
    );
    println!("{}", pg::app_login(&mut client, &a.database_url)?);
    Ok(true)
}

/// Flags of one target given to the other are a mistake, not something to ignore.
fn check_target_flags(a: &RunArgs) -> Result<()> {
    let k8s_only = a.dry_run
        || a.load.is_some()
        || a.namespace.is_some()
        || a.postgres_image.is_some()
        || a.img.registry.is_some()
        || a.img.engine.is_some();
    let local_only = a.database_url.is_some() || a.pg_data.is_some() || a.profile;
    if a.url.is_some() {
        if a.target == TargetName::K8s || k8s_only {
            bail!("--url measures a service already running from this machine: it does not go with --target k8s, --dry-run, --registry, --load, --namespace or --engine");
        }
        if a.pg_data.is_some() || a.profile || a.allow_settings || !a.m.only.is_empty() {
            bail!("--url measures one service already running: --pg-data, --profile, --allow-settings and --only do not apply");
        }
        return Ok(());
    }
    match a.target {
        TargetName::Local if k8s_only => {
            bail!("--dry-run, --registry, --load, --namespace, --postgres-image and --engine go with --target k8s")
        }
        TargetName::K8s if local_only => {
            bail!("--database-url, --pg-data and --profile go with --target local")
        }
        _ => Ok(()),
    }
}

/// Where a run of `matrix_file` writes by default: the repository's root for
/// matrix.toml, results/<name>/ for any other (results/matrix-peers/).
fn default_out(root: &Path, matrix_file: &str) -> PathBuf {
    match report::Block::name_of(matrix_file) {
        None => root.to_path_buf(),
        Some(name) => root.join("results").join(name),
    }
}

/// Where a trial run of `matrix_file` writes by default: under target/, never over the
/// published results.
fn trial_out(root: &Path, matrix_file: &str) -> PathBuf {
    let name = report::Block::name_of(matrix_file).unwrap_or_else(|| "matrix".into());
    root.join("target").join("lab-runs").join(name)
}

/// What a local run may do to the server's settings: anything in the script's own
/// cluster; in yours, with --allow-settings, the names the matrix sets, else nothing
/// (then no row may need settings of its own). A module's settings (the blocks'
/// planning counter) are never changed in yours: they could not be put back where the
/// module is not preloaded.
fn settings_scope(a: &RunArgs, m: &Matrix) -> Result<local::pg::SettingsScope> {
    use local::pg::SettingsScope;
    if a.own_cluster {
        return Ok(SettingsScope::All);
    }
    if !a.allow_settings {
        if let Some(row) = m.rows.iter().find(|r| !r.postgres.is_empty()) {
            return Err(usage(anyhow::anyhow!(
                "row {:?} sets PostgreSQL settings: with your own --database-url that needs --allow-settings (they are put back at the end)",
                row.name
            )));
        }
        return Ok(SettingsScope::Nothing);
    }
    let mut names: Vec<String> = m
        .postgres
        .keys()
        .chain(m.rows.iter().flat_map(|r| r.postgres.keys()))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    Ok(SettingsScope::Only(names))
}

/// The experiment on the chosen target.
pub fn run(a: &RunArgs) -> Result<Outcome> {
    check_target_flags(a).map_err(usage)?;
    // The baseline is read before anything runs: a wrong path fails at once.
    let baseline = a.compare.as_deref().map(crate::compare::load).transpose()?;
    let mut matrix = load_matrix(&a.m)?;
    if let Some(url) = &a.url {
        matrix.measure_service(url).map_err(usage)?;
    }
    if matrix.load.repetitions == 0 && a.target == TargetName::K8s {
        return Err(usage(anyhow::anyhow!(
            "this matrix is measured by the blocks alone (repetitions = 0{}), which the Kubernetes target does not run yet: run it with --target local",
            if matrix.scale.is_some() { ": a curve" } else { "" }
        )));
    }
    if matrix.measures_services() && a.target == TargetName::K8s {
        return Err(usage(anyhow::anyhow!(
            "`url` rows are services already running, measured from this machine: run them with --target local"
        )));
    }
    if a.check {
        if matrix.measures_services() {
            eprintln!("==> services already running: nothing is built, started, seeded or changed; the load PATCHes the emails of users 1..{}", matrix.load.users);
            return Ok(Outcome::Passed);
        }
        if a.target == TargetName::Local && !a.own_cluster {
            eprintln!("==> against your --database-url, the run:");
            for change in crate::local::sandbox::changes(a.allow_settings) {
                eprintln!("    - {change}");
            }
        }
        return validate(&a.m).map(Outcome::from);
    }
    let root = repo_root()?;
    // By default the default matrix writes into the repository's root, any other into
    // results/<its name>/; both update their own block of the README. A trial run
    // (quick, some rows, a study flag) publishes nothing unless asked to.
    let publish = a.publish || !(a.m.is_trial() || a.url.is_some());
    let out = match &a.out {
        Some(out) => absolute(&std::env::current_dir()?, out),
        None if publish => default_out(&root, &a.m.matrix.to_string_lossy()),
        None => trial_out(&root, &a.m.matrix.to_string_lossy()),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let readme = match &a.readme {
        Some(r) => Some(r.clone()),
        None if publish
            && (a.out.is_none() || out.canonicalize().ok() == root.canonicalize().ok()) =>
        {
            Some(report::page_for(&root, &a.m.matrix.to_string_lossy()))
        }
        None => None,
    };
    if !publish && a.out.is_none() && !a.check {
        eprintln!(
            "==> a trial run (--quick, --only, --url or a study flag): its results go to {}; the published results are left alone (--publish replaces them)",
            out.display()
        );
    }
    let e = Experiment {
        root: root.clone(),
        matrix_path: a.m.matrix.clone(),
        matrix,
        quick: a.m.quick,
        out: out.clone(),
        readme,
    };
    let summary = match a.target {
        TargetName::Local if e.matrix.measures_services() => {
            let o = crate::service::Options {
                database_url: a.database_url.clone(),
                oha: a.img.oha()?,
                ready_within: Duration::from_secs(30),
                quick: a.m.quick,
            };
            experiment::run(&e, &mut crate::service::Services::new(&o, &e.matrix))?
        }
        TargetName::Local => {
            let given = a
                .database_url
                .clone()
                .context("--database-url is required (scripts/run-matrix.sh starts a PostgreSQL and gives it)")?;
            let mut settings = settings_scope(a, &e.matrix)?;
            // Your own PostgreSQL: the run works in a database of its own and puts back
            // whatever it changes (local/sandbox.rs).
            let sandbox = match (&settings, a.own_cluster) {
                (_, true) => None,
                (scope, false) => Some(local::sandbox::Sandbox::enter(
                    &given,
                    match scope {
                        local::pg::SettingsScope::Only(names) => Some(names.as_slice()),
                        _ => None,
                    },
                    &a.journal
                        .clone()
                        .unwrap_or_else(|| local::sandbox::journal_path(&root)),
                )?),
            };
            if let (Some(s), local::pg::SettingsScope::Only(_)) = (&sandbox, &settings) {
                settings = local::pg::SettingsScope::Only(s.settings());
            }
            let database_url = sandbox.as_ref().map_or(given, |s| s.url().to_string());
            std::fs::create_dir_all(&out)?;
            let o = local::Options {
                root,
                database_url,
                settings,
                db_prefix: sandbox
                    .as_ref()
                    .map_or_else(|| "perflab".to_string(), |s| s.name().to_string()),
                pg_data: a.pg_data.clone(),
                oha: a.img.oha()?,
                profile: a.profile,
                quick: a.m.quick,
            };
            if a.profile && !local::profile::available() {
                bail!("--profile needs perf (Debian: apt-get install linux-perf; scripts/run-matrix.sh --profile installs it)");
            }
            let mut target = local::Local::new(&o, &e.matrix);
            let summary = experiment::run(&e, &mut target);
            drop(target);
            if let Some(s) = sandbox {
                match (s.done(), &summary) {
                    (Err(undo), Err(_)) => eprintln!("warning: {undo:#}"),
                    (Err(undo), Ok(_)) => return Err(undo),
                    (Ok(()), _) => {}
                }
            }
            summary?
        }
        TargetName::K8s => {
            let o = k8s::Options {
                root: root.clone(),
                dry_run: a.dry_run,
                registry: a.img.registry(),
                load: a.load.clone(),
                engine: a.img.engine(),
                overlays: absolute(&root, &a.overlays),
                oha: if a.dry_run {
                    a.img.oha().unwrap_or_else(|_| a.img.oha.clone())
                } else {
                    a.img.oha()?
                },
                timeout: Duration::from_secs(a.timeout_secs),
                namespace: {
                    let ns = a.namespace.as_deref().unwrap_or(k8s::NAMESPACE);
                    k8s::check_namespace(ns).map_err(usage)?;
                    ns.to_string()
                },
                postgres_image: match &a.postgres_image {
                    Some(image) => {
                        k8s::manifests::check_postgres_image(image).map_err(usage)?;
                        Some(image.clone())
                    }
                    None => None,
                },
            };
            let summary = experiment::run(&e, &mut k8s::Cluster::new(&o, &e.matrix))?;
            if a.dry_run {
                println!(
                    "# dry run: {} rows rendered, checked and planned; nothing was applied",
                    summary.rows.len()
                );
                return Ok(Outcome::Passed);
            }
            summary
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    let intact = Outcome::from(outcome(&summary));
    let compared = match &baseline {
        Some(old) => compare_summaries(old, &summary, a.fail_above, a.noise_floor, a.json)?,
        None => Outcome::Passed,
    };
    // An integrity failure or an unmeasured row outranks a regression.
    Ok(if intact == Outcome::Failed {
        intact
    } else {
        compared
    })
}

pub fn soak(a: &SoakArgs) -> Result<bool> {
    let report = soak::run(&soak::Options {
        root: repo_root()?,
        matrix: Matrix::load_file(&a.matrix)?,
        row: a.row.clone(),
        workload: a.workload.clone(),
        duration: a.duration,
        interval: a.interval,
        share: a.share,
        rate: a.rate,
        database_url: a.database_url.clone(),
        pg_data: a.pg_data.clone(),
        oha: a.oha.clone(),
        out: a.out.clone(),
    })?;
    soak::write(&a.out, &report)?;
    print!("{}", soak::markdown(&report));
    eprintln!(
        "==> wrote {} and {}",
        a.out.join("soak.md").display(),
        a.out.join("soak.json").display()
    );
    Ok(report.passed)
}

/// Builds the images; prints one line per image (or only the names, server first).
pub fn images(a: &ImagesArgs) -> Result<bool> {
    let matrix = load_matrix(&a.m)?;
    let root = repo_root()?;
    let names = a.img.images(&root);
    let engine = images::Engine::choose(&a.img.engine())?;
    let sh = Shell { dry_run: false };
    let mut built = vec![];
    for row in &matrix.rows {
        let tag = names.server(row);
        let Some(info) = images::row_image(&sh, engine, &root, row, &tag)? else {
            eprintln!("{tag}: row {:?}'s own image, not built here", row.name);
            continue;
        };
        if let (Some(max), None) = (a.max_server_mb, &row.external) {
            let mb = images::size_mb(&info.size)
                .with_context(|| format!("cannot read the size {:?} of {tag}", info.size))?;
            if mb > max {
                bail!("the server image {tag} is {} (over {max} MB)", info.size);
            }
        }
        built.push((tag, info));
    }
    let tag = names.loadgen();
    let info = images::loadgen(&sh, engine, &root, &a.img.oha()?, &tag)?;
    built.push((tag, info));
    for (tag, i) in &built {
        let line = format!(
            "{tag}\t{}\tuser {}\tentrypoint {}",
            i.size, i.user, i.entrypoint
        );
        if a.names_only {
            eprintln!("{line}");
            println!("{tag}");
        } else {
            println!("{line}");
        }
    }
    Ok(true)
}

pub fn loadgen(a: &LoadgenArgs) -> Result<bool> {
    let report = loadgen::run(&loadgen::Options {
        url: a.url.clone(),
        plan: a.plan.clone(),
        oha: a.oha.clone(),
        work: a.work.clone(),
        ready_within: Duration::from_secs(a.ready_timeout_secs),
    })?;
    if let Some(e) = &report.error {
        eprintln!("!!! {e}");
    }
    Ok(report.error.is_none())
}

pub fn plan(m: &MatrixArgs) -> Result<bool> {
    let matrix = load_matrix(m)?;
    println!("{}", serde_json::to_string_pretty(&k8s::plan(&matrix, 1)?)?);
    Ok(true)
}

/// A load-generator log read back into results, as a Kubernetes run does.
pub fn ingest(a: &IngestArgs) -> Result<bool> {
    let matrix = load_matrix(&a.m)?;
    let text =
        std::fs::read_to_string(&a.log).with_context(|| format!("reading {}", a.log.display()))?;
    let report = loadgen::Report::from_log(&text)?;
    let oha = report.oha.clone();
    let rows = k8s::ingest(&matrix, report, a.applied)?;
    let e = Experiment {
        root: repo_root()?,
        matrix_path: a.m.matrix.clone(),
        matrix,
        quick: a.m.quick,
        out: a.out.clone(),
        readme: None,
    };
    let environment = experiment::environment(
        &e,
        Host::Cluster {
            kubernetes: "(none: the container test)".into(),
        },
        experiment::Software {
            postgres: "15 (container)".into(),
            oha: format!("{oha} (load-generator image)"),
        },
        0.0,
    );
    let mut summary = Summary {
        schema_version: crate::results::SCHEMA_VERSION,
        environment,
        workloads: e.matrix.workloads.iter().map(|w| w.name.clone()).collect(),
        rows,
        reference: vec![],
        reference_error: None,
        matrix: serde_json::to_value(&e.matrix)?,
        blocks: None,
    };
    summary.derive();
    let raw = a.out.join("results").join("ingested");
    std::fs::create_dir_all(&raw)?;
    experiment::write_outputs(&a.out, None, &raw, &summary)?;
    let failures = summary.integrity_failures();
    for f in &failures {
        eprintln!("!!! integrity: {f}");
    }
    Ok(failures.is_empty())
}

/// The newest run folder under `out/results/` (their names are UTC stamps).
fn newest_run(out: &Path) -> Result<PathBuf> {
    let dir = out.join("results");
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("summary.json").is_file())
        .collect();
    runs.sort();
    runs.pop().with_context(|| {
        format!(
            "{} holds no run (results/<stamp>/summary.json)",
            dir.display()
        )
    })
}

/// A run wrote results.md with numbers for every row, and the README block.
/// The rows' pods and databases as the run recorded them: every window of a row that
/// sets `resources` has the server's throttling counted, each `--expect-own-cluster`
/// row ran in a cluster of its own, and the rows' settings are in the record.
fn check_pods(summary: &crate::results::Summary, m: &Matrix, own: &[String]) -> Result<()> {
    let Some(b) = &summary.blocks else {
        anyhow::ensure!(
            own.is_empty(),
            "--expect-own-cluster: the run measured no blocks"
        );
        return Ok(());
    };
    for row in m.rows.iter().filter(|r| r.resources.is_some()) {
        let windows: Vec<_> = b.windows.iter().filter(|w| w.row == row.name).collect();
        if windows.is_empty() || windows.iter().any(|w| w.throttling.is_none()) {
            bail!(
                "row {:?} sets `resources`, but its windows did not count the server's throttling",
                row.name
            );
        }
    }
    for name in own {
        if !b.own_clusters.contains(name) {
            bail!("row {name:?} did not run in a PostgreSQL cluster of its own");
        }
    }
    for row in &m.rows {
        let recorded = summary.rows.iter().find(|r| r.name == row.name);
        if recorded.is_some_and(|r| r.settings != row.settings_words()) {
            bail!(
                "row {:?}: the record's settings are not the matrix's",
                row.name
            );
        }
    }
    Ok(())
}

/// A curve's run (`[scale]`): every row's windows have their fixed-rate window with
/// its p99, memory and file descriptors, and results.md shows the curve's table and
/// chart.
fn check_curve(summary: &crate::results::Summary, m: &Matrix, md: &str, out: &Path) -> Result<()> {
    if m.scale.is_none() {
        return Ok(());
    }
    let b = summary
        .blocks
        .as_ref()
        .context("a curve's run measured no blocks")?;
    for row in &m.rows {
        let windows: Vec<_> = b.windows.iter().filter(|w| w.row == row.name).collect();
        let complete = |w: &&crate::blocks::Window| {
            w.fixed.as_ref().is_some_and(|f| {
                f.p99_ms.is_some() && f.server_rss_bytes.is_some() && f.server_fds.is_some()
            })
        };
        if windows.is_empty() || !windows.iter().all(complete) {
            bail!(
                "row {:?}: not every window has its fixed-rate window (p99, memory, file descriptors)",
                row.name
            );
        }
    }
    for row in m.rows.iter().filter(|r| r.postgres_memory_limit.is_some()) {
        anyhow::ensure!(
            b.own_clusters.contains(&row.name),
            "row {:?} sets postgres_memory_limit but did not run in a PostgreSQL of its own",
            row.name
        );
    }
    let points = crate::scale::curve(summary)
        .context("the run's record has no curve")?
        .1
        .len();
    anyhow::ensure!(
        points == m.rows.len() * m.workloads.len(),
        "the curve has {points} points, not one per row and workload"
    );
    anyhow::ensure!(
        md.contains("## The curve") && md.contains(crate::charts::SCALE.0),
        "results.md shows no curve"
    );
    let svg = std::fs::read_to_string(out.join(crate::charts::SCALE.0))
        .with_context(|| format!("{} was not written", crate::charts::SCALE.0))?;
    anyhow::ensure!(
        svg.starts_with("<svg"),
        "{} is not an SVG",
        crate::charts::SCALE.0
    );
    Ok(())
}

pub fn verify(a: &VerifyArgs) -> Result<bool> {
    let mut matrix = load_matrix(&a.m)?;
    if let Some(url) = &a.url {
        matrix.measure_service(url).map_err(usage)?;
    }
    for name in &a.expect_failed {
        if !matrix.rows.iter().any(|r| &r.name == name) {
            return Err(usage(anyhow::anyhow!(
                "--expect-failed {name:?}: no such row"
            )));
        }
    }
    let names: Vec<String> = matrix
        .rows
        .iter()
        .map(|r| r.name.clone())
        .filter(|n| !a.expect_failed.contains(n))
        .collect();
    let md =
        std::fs::read_to_string(a.out.join("results.md")).context("results.md was not written")?;
    report::check_table(&md, &names, matrix.workloads.len()).context("results.md")?;
    for name in &a.expect_failed {
        report::check_failed(&md, name, &a.failed_because).context("results.md")?;
    }
    // The checks' outcome from the run's record, not from its rendered words.
    let summary = crate::compare::load(&newest_run(&a.out)?)?;
    let failures = summary.integrity_failures();
    if !failures.is_empty() {
        bail!("the run's integrity checks failed: {}", failures.join("; "));
    }
    if matches!(
        summary.environment.host,
        Host::Service {
            database_checked: false,
            ..
        }
    ) {
        bail!("the run's writes were not checked (it had no --database-url)");
    }
    check_pods(&summary, &matrix, &a.expect_own_cluster)?;
    check_curve(&summary, &matrix, &md, &a.out)?;
    let graphs = md.matches("[flame graph](").count();
    let wanted = names.len() * matrix.workloads.len();
    if a.profiled && graphs < wanted {
        bail!("results.md links {graphs} flame graphs, not one per row and workload ({wanted})");
    }
    // Every file results.md links under results/ (flame graphs) was written.
    for link in md.split("](").skip(1).filter_map(|t| t.split(')').next()) {
        if link.starts_with("results/") && !a.out.join(link).is_file() {
            bail!("results.md links {link}, which was not written");
        }
    }
    if let Some(readme) = &a.readme {
        let text = std::fs::read_to_string(readme)?;
        let at = report::Block::new(&a.m.matrix.to_string_lossy(), &a.out, readme);
        let Some(block) = at.find(&text) else {
            bail!(
                "{} has no results block for {}",
                readme.display(),
                a.m.matrix.display()
            );
        };
        report::check_table(block, &names, matrix.workloads.len()).context("README table")?;
    }
    let linked = md.contains(&format!("]({})", crate::charts::THROUGHPUT.0));
    if a.blocks && !(matrix.blocks.blocks > 0 && linked) {
        bail!("--blocks: results.md shows no randomized blocks (the matrix needs [blocks] blocks > 0)");
    }
    let headline = linked.then_some(crate::charts::THROUGHPUT);
    let charts = crate::charts::CHARTS.len() + usize::from(headline.is_some());
    for (file, _) in crate::charts::CHARTS.into_iter().chain(headline) {
        let svg = std::fs::read_to_string(a.out.join(file))
            .with_context(|| format!("{file} was not written"))?;
        if !svg.starts_with("<svg") || !svg.trim_end().ends_with("</svg>") {
            bail!("{file} is not an SVG");
        }
        if let Some(missing) = names
            .iter()
            .find(|n| !svg.contains(&n.replace('&', "&amp;")))
        {
            bail!("{file} does not show row {missing:?}");
        }
    }
    eprintln!(
        "verified: {} rows with numbers for {} workloads, and the {charts} charts{}",
        names.len(),
        matrix.workloads.len(),
        if a.expect_failed.is_empty() {
            String::new()
        } else {
            format!(
                "; {} reported as failed: {}",
                a.expect_failed.join(", "),
                a.failed_because
            )
        }
    );
    Ok(true)
}

/// (passed, failed) over every `test result:` line of cargo test output.
pub fn count_tests(text: &str) -> (u64, u64) {
    let mut totals = (0, 0);
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            continue;
        };
        let count = |what: &str| {
            rest.split(';')
                .find_map(|part| part.trim().strip_suffix(what))
                .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        totals.0 += count("passed");
        totals.1 += count("failed");
    }
    totals
}

pub fn test_totals(a: &TestTotalsArgs) -> Result<bool> {
    let text =
        std::fs::read_to_string(&a.log).with_context(|| format!("reading {}", a.log.display()))?;
    let (passed, failed) = count_tests(&text);
    println!("{} passed, {failed} failed", passed + a.extra);
    Ok(failed == 0)
}

/// Says what went wrong in a run; true when every row was measured and every
/// integrity check passed.
pub fn outcome(summary: &Summary) -> bool {
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

/// Runs one parsed command line.
/// How a command ended, as its exit code says (documented in docs/method.md): 0
/// measured and intact; 1 an integrity failure, an unmeasured row, a failed check or an
/// error while running; 2 a usage error, nothing ran (clap's own usage errors exit 2
/// too; the scripts exit 2 when a tool is missing); 3 a significant regression found by
/// a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Regressed,
}

impl From<bool> for Outcome {
    fn from(passed: bool) -> Self {
        if passed {
            Outcome::Passed
        } else {
            Outcome::Failed
        }
    }
}

impl Outcome {
    pub const USAGE: u8 = 2;
    pub const FAILED: u8 = 1;

    pub fn code(self) -> u8 {
        match self {
            Outcome::Passed => 0,
            Outcome::Failed => 1,
            Outcome::Regressed => 3,
        }
    }
}

pub fn dispatch(cmd: &Cmd) -> Result<Outcome> {
    let passed = match cmd {
        Cmd::Compare(a) => return compare(a),
        Cmd::Run(a) => return run(a),
        Cmd::Validate(m) => validate(m),
        Cmd::Seed(a) => seed(a),
        Cmd::Soak(a) => soak(a),
        Cmd::Images(a) => images(a),
        Cmd::Loadgen(a) => loadgen(a),
        Cmd::Plan(m) => plan(m),
        Cmd::Ingest(a) => ingest(a),
        Cmd::Verify(a) => verify(a),
        Cmd::TestTotals(a) => test_totals(a),
        Cmd::Repeatability(a) => repeatability(a),
        Cmd::Render(a) => render(a),
        Cmd::Restore(a) => {
            if crate::local::sandbox::restore(&a.journal)? {
                eprintln!("==> undone from {}", a.journal.display());
            }
            Ok(true)
        }
        Cmd::Calibrate => {
            println!(
                "{:.0} {:.1}",
                crate::measure::calibrate::ns_per_thousand(5),
                crate::measure::calibrate::memory_ns_per_read()
            );
            Ok(true)
        }
    };
    passed.map(Outcome::from)
}

/// `lab compare OLD NEW`: the report on stdout; `Regressed` when a row regressed.
pub fn compare(a: &CompareArgs) -> Result<Outcome> {
    let (mut old, mut new) = (crate::compare::load(&a.old)?, crate::compare::load(&a.new)?);
    // The blocks' derived values (the steal adjustment included) from their windows.
    old.derive_blocks();
    new.derive_blocks();
    compare_summaries(&old, &new, a.fail_above, a.noise_floor, false)
}

/// Compares two summaries; the report goes to stdout, or to stderr when stdout carries
/// something else (`run --json`).
fn compare_summaries(
    old: &Summary,
    new: &Summary,
    fail_above: f64,
    floor: f64,
    to_stderr: bool,
) -> Result<Outcome> {
    let lines = crate::compare::lines(old, new, floor);
    // The blocks decide when both runs have cells with intervals; else the SLO lines.
    let blocks = match (&old.blocks, &new.blocks) {
        (Some(a), Some(b)) => Some(crate::blocks::compare::lines(a, b)),
        _ => None,
    }
    .filter(|(l, _)| !l.is_empty());
    if lines.is_empty() && blocks.is_none() {
        bail!("the two runs have no row and workload in common");
    }
    let mut text = String::new();
    if let Some((l, spreads)) = &blocks {
        text.push_str(&crate::blocks::compare::report(l, spreads, fail_above));
        text.push_str("\n**The SLO capacity** (secondary; it decides no regression when both runs have blocks):\n\n");
    }
    text.push_str(&crate::compare::report(old, new, &lines, fail_above, floor));
    if to_stderr {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    let regressed: Vec<String> = match &blocks {
        Some((l, _)) => l
            .iter()
            .filter(|l| l.regressed(fail_above))
            .map(|l| format!("{} / {} / {}", l.row, l.workload, l.measure.name))
            .collect(),
        None => lines
            .iter()
            .filter(|l| l.regressed(fail_above))
            .map(|l| format!("{} / {} / {}", l.row, l.workload, l.measure))
            .collect(),
    };
    if regressed.is_empty() {
        return Ok(Outcome::Passed);
    }
    eprintln!(
        "!!! significant regression beyond {fail_above}%: {}",
        regressed.join("; ")
    );
    Ok(Outcome::Regressed)
}

/// `lab render RUN`: redraws the outputs of a run from its summary and steps.
pub fn render(a: &RenderArgs) -> Result<bool> {
    if !a.run.join("summary.json").is_file() {
        bail!(
            "{} holds no summary.json: give a results/<stamp> folder",
            a.run.display()
        );
    }
    let mut summary = crate::compare::load(&a.run)?;
    summary.derive_blocks();
    let out = match &a.out {
        Some(out) => out.clone(),
        None => default_out(&repo_root()?, &summary.environment.matrix_file),
    };
    std::fs::create_dir_all(&out)?;
    experiment::render_outputs(&out, a.readme.as_deref(), &a.run, &summary)?;
    Ok(summary.integrity_failures().is_empty())
}

/// `lab repeatability RUN...`: the spread of each run's repetitions, on stdout.
pub fn repeatability(a: &RepeatabilityArgs) -> Result<bool> {
    let runs = a
        .runs
        .iter()
        .map(|p| {
            let name = p
                .components()
                .rev()
                .find(|c| c.as_os_str() != "summary.json")
                .map_or_else(
                    || p.display().to_string(),
                    |c| c.as_os_str().to_string_lossy().to_string(),
                );
            Ok((name, crate::compare::load(p)?))
        })
        .collect::<Result<Vec<_>>>()?;
    print!("{}", crate::compare::repeatability(&runs));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn counts_cargo_test_results() {
        let log = "running 3 tests\n...\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
                   test result: FAILED. 10 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out\nnoise\n";
        assert_eq!(count_tests(log), (13, 2));
        assert_eq!(count_tests(""), (0, 0));
    }

    #[test]
    fn flags_of_the_other_target_are_refused() {
        let parse = |args: &[&str]| match crate::cli::Cli::try_parse_from(args).unwrap().command {
            Cmd::Run(a) => check_target_flags(&a),
            _ => unreachable!(),
        };
        assert!(parse(&["lab", "run", "--dry-run"]).is_err());
        assert!(parse(&["lab", "run", "--target", "k8s", "--database-url", "x"]).is_err());
        assert!(parse(&["lab", "run", "--target", "k8s", "--dry-run"]).is_ok());
        assert!(parse(&["lab", "run", "--database-url", "x"]).is_ok());
        assert!(parse(&["lab", "run", "--namespace", "a"]).is_err());
        assert!(parse(&["lab", "run", "--target", "k8s", "--namespace", "a"]).is_ok());
        // Given on purpose, even with the default's value, it is a Kubernetes flag.
        assert!(parse(&["lab", "run", "--registry", "localhost"]).is_err());
        assert!(parse(&["lab", "run", "--engine", "auto"]).is_err());
        // An engine the lab does not drive is refused by the parser itself.
        let podman = ["lab", "run", "--target", "k8s", "--engine", "podman"];
        assert!(crate::cli::Cli::try_parse_from(podman).is_err());
        assert!(parse(&["lab", "run", "--target", "k8s", "--engine", "buildah"]).is_ok());
        let url = ["lab", "run", "--url", "http://127.0.0.1:1"];
        assert!(parse(&url).is_ok());
        assert!(parse(&[&url[..], &["--database-url", "x"]].concat()).is_ok());
        for extra in [
            &["--target", "k8s"][..],
            &["--dry-run"],
            &["--profile"],
            &["--pg-data", "/x"],
            &["--only", "+pool"],
            &["--allow-settings"],
        ] {
            assert!(parse(&[&url[..], extra].concat()).is_err(), "{extra:?}");
        }
    }

    #[test]
    fn a_bad_matrix_exits_2_and_a_failure_while_running_exits_1() {
        let cli = crate::cli::Cli::try_parse_from([
            "lab",
            "validate",
            "--matrix",
            "/nonexistent/matrix.toml",
        ])
        .unwrap();
        let Cmd::Validate(m) = cli.command else {
            unreachable!()
        };
        let e = load_matrix(&m).unwrap_err();
        assert_eq!(error_code(&e), 2, "{e:#}");
        assert!(format!("{e:#}").contains("/nonexistent/matrix.toml"));
        let crash = anyhow::anyhow!("PostgreSQL went away in the middle of a run");
        assert_eq!(error_code(&crash), 1);
        let e = crate::cli::Cli::try_parse_from(["lab", "run", "--dry-run"]).unwrap();
        let Cmd::Run(a) = e.command else {
            unreachable!()
        };
        assert_eq!(error_code(&run(&a).unwrap_err()), 2);
    }

    #[test]
    fn compare_exits_3_on_a_crafted_regression_and_0_on_the_same_run() {
        let root = repo_root().unwrap();
        let committed = root.join("results/20261129T020005Z/summary.json");
        let args = |new: PathBuf| CompareArgs {
            old: committed.clone(),
            new,
            fail_above: 5.0,
            noise_floor: crate::compare::NOISE_FLOOR_PCT,
        };
        assert_eq!(compare(&args(committed.clone())).unwrap(), Outcome::Passed);
        // The same run with every capacity of +coalesce cut by 40%.
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&committed).unwrap()).unwrap();
        for row in v["rows"].as_array_mut().unwrap() {
            if row["name"] == "+coalesce" {
                for w in row["workloads"].as_array_mut().unwrap() {
                    for s in w["searches"].as_array_mut().unwrap() {
                        s["qps"] = serde_json::json!(s["qps"].as_f64().unwrap() * 0.6);
                    }
                }
            }
        }
        let crafted = std::env::temp_dir().join(format!("lab-crafted-{}.json", std::process::id()));
        std::fs::write(&crafted, v.to_string()).unwrap();
        let outcome = compare(&args(crafted.clone())).unwrap();
        std::fs::remove_file(&crafted).unwrap();
        assert_eq!(outcome, Outcome::Regressed);
        assert_eq!(
            (
                Outcome::Passed.code(),
                Outcome::Failed.code(),
                Outcome::USAGE,
                outcome.code()
            ),
            (0, 1, 2, 3)
        );
    }

    #[test]
    fn every_subcommand_validates_the_committed_matrix() {
        let root = repo_root().unwrap();
        let m = MatrixArgs {
            matrix: root.join("matrix.toml"),
            only: vec![],
            quick: true,
            step_secs: None,
            common_qps: None,
            no_reference: false,
        };
        assert!(validate(&m).unwrap());
        assert!(plan(&m).unwrap());
    }
}
