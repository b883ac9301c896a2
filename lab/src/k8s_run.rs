//! One run of the matrix on Kubernetes: build and publish one image per row and the
//! load-generator image, then, for each repetition and row (interleaved, as locally):
//! apply PostgreSQL, seed it, apply the app, run the load-generator Job (the same search
//! and verdicts as locally, see `loadgen`), read its result from `kubectl logs`, check
//! the Job's writes against the database, tear the row down. A failed row is reported
//! as failed and the run goes on. With `dry_run`, every command is printed instead.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::images::{self, Engine};
use crate::k8s::{self, Images};
use crate::loadgen::{Plan, Report};
use crate::matrix::{Matrix, Row};
use crate::measure::check_integrity;
use crate::results::*;
use crate::shell::Shell;
use crate::{environment, runner};

pub const NAMESPACE: &str = "perflab";

pub struct Options {
    pub root: PathBuf,
    pub matrix_path: PathBuf,
    pub matrix: Matrix,
    pub quick: bool,
    pub dry_run: bool,
    pub registry: String,
    pub load: Option<String>,
    pub engine: String,
    /// Where the generated overlays go.
    pub overlays: PathBuf,
    pub out: PathBuf,
    pub readme: Option<PathBuf>,
    /// The oha binary copied into the load-generator image.
    pub oha: PathBuf,
    /// Upper bound for each wait (rollouts, the seed Job).
    pub timeout: Duration,
}

struct Kube<'a> {
    sh: &'a Shell,
}

impl Kube<'_> {
    fn ctl(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["kubectl", "-n", NAMESPACE];
        v.extend_from_slice(args);
        self.sh.run(&v)
    }

    fn apply(&self, file: &Path) -> Result<()> {
        self.sh
            .run(&["kubectl", "apply", "-f", &file.to_string_lossy()])?;
        Ok(())
    }

    fn rollout(&self, what: &str, timeout: Duration) -> Result<()> {
        self.ctl(&[
            "rollout",
            "status",
            what,
            &format!("--timeout={}s", timeout.as_secs()),
        ])
        .with_context(|| format!("{what} did not become ready"))?;
        Ok(())
    }

    /// Waits until the Job completes; fails at once when it failed or its pod cannot
    /// start (a bad image, a missing ConfigMap), with the end of its log.
    fn wait_job(&self, job: &str, timeout: Duration) -> Result<()> {
        if self.sh.dry_run {
            self.ctl(&[
                "wait",
                &format!("job/{job}"),
                "--for=jsonpath={.status.conditions[?(@.status==\"True\")].type}",
                &format!("--timeout={}s", timeout.as_secs()),
            ])?;
            println!("#   (polled: Complete → go on; Failed, ImagePullBackOff or CreateContainerConfigError → fail the row at once)");
            return Ok(());
        }
        let start = Instant::now();
        loop {
            let state = self.ctl(&[
                "get",
                "job",
                job,
                "-o",
                "jsonpath={.status.conditions[?(@.status==\"True\")].type}",
            ])?;
            if state.contains("Complete") {
                return Ok(());
            }
            if state.contains("Failed") {
                bail!("Job {job} failed:\n{}", self.log_tail(job));
            }
            let waiting = self
                .ctl(&[
                    "get",
                    "pods",
                    "-l",
                    &format!("job-name={job}"),
                    "-o",
                    "jsonpath={.items[*].status.containerStatuses[*].state.waiting.reason}",
                ])
                .unwrap_or_default();
            for bad in [
                "ErrImagePull",
                "ImagePullBackOff",
                "InvalidImageName",
                "CreateContainerConfigError",
                "CreateContainerError",
            ] {
                if waiting.contains(bad) {
                    bail!("Job {job} cannot start: {bad}");
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "Job {job} did not finish within {timeout:?}:\n{}",
                    self.log_tail(job)
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    fn log_tail(&self, job: &str) -> String {
        self.ctl(&["logs", &format!("job/{job}"), "--tail=20"])
            .unwrap_or_else(|e| format!("(no log: {e:#})"))
    }

    /// Runs a command in the PostgreSQL container.
    fn in_postgres(&self, cmd: &[&str]) -> Result<String> {
        let mut v = vec!["exec", "statefulset/postgres", "-c", "postgres", "--"];
        v.extend_from_slice(cmd);
        self.ctl(&v)
    }

    /// sum(version) over all users, asked inside the PostgreSQL pod.
    fn applied_writes(&self) -> Result<i64> {
        let out = self.in_postgres(&[
            "psql",
            "-U",
            "postgres",
            "-tAc",
            "SELECT coalesce(sum(version), 0) FROM users",
        ])?;
        if self.sh.dry_run {
            return Ok(0);
        }
        out.trim()
            .parse()
            .with_context(|| format!("sum(version) answered {:?}", out.trim()))
    }

    /// CPU time of the PostgreSQL container so far, in µs, from its cgroup.
    fn postgres_cpu_usec(&self) -> Option<u64> {
        let out = self
            .in_postgres(&[
                "sh",
                "-c",
                "cat /sys/fs/cgroup/cpu.stat 2>/dev/null || cat /sys/fs/cgroup/cpuacct/cpuacct.usage",
            ])
            .ok()?;
        cgroup_cpu_usec(&out)
    }

    /// The run's PostgreSQL settings, as locally: ALTER SYSTEM and a reload.
    fn apply_settings(&self, settings: &BTreeMap<String, String>) -> Result<()> {
        for (k, v) in settings {
            self.in_postgres(&[
                "psql",
                "-U",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("ALTER SYSTEM SET {k} = '{}'", v.replace('\'', "''")),
                "-c",
                "SELECT pg_reload_conf()",
            ])?;
        }
        Ok(())
    }
}

pub fn run(o: &Options) -> Result<Summary> {
    let m = &o.matrix;
    let sh = Shell { dry_run: o.dry_run };
    let kube = Kube { sh: &sh };
    let started = Instant::now();
    let images = Images {
        registry: o.registry.clone(),
        commit: environment::git_commit(&o.root).replace("+uncommitted changes", "-dirty"),
    };
    let engine = Engine::choose(&o.engine)?;
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let raw = o.out.join("results").join(&stamp);
    if !o.dry_run {
        std::fs::create_dir_all(&raw)?;
        eprintln!("==> results of this run go to {}", raw.display());
    }

    // The cluster must have a load-generator node, or the Job would never schedule.
    let version = sh
        .run(&["kubectl", "version", "-o", "json"])
        .context("no cluster answers: is KUBECONFIG set?")?;
    let nodes = sh.run(&[
        "kubectl",
        "get",
        "nodes",
        "-l",
        "loadgen=true",
        "-o",
        "name",
    ])?;
    if !o.dry_run && nodes.trim().is_empty() {
        bail!("no node is labelled loadgen=true: prepare one with\n  kubectl label node NODE loadgen=true\n  kubectl taint node NODE loadgen=true:NoSchedule");
    }
    let server_version = if o.dry_run {
        "dry run".to_string()
    } else {
        serde_json::from_str::<serde_json::Value>(&version)
            .ok()
            .and_then(|j| j["serverVersion"]["gitVersion"].as_str().map(String::from))
            .unwrap_or_else(|| "unknown".into())
    };

    // Images: the load generator once, then one per row; a failed build fails its row.
    println!(
        "# images: built with {} and {}",
        engine.name(),
        o.load
            .as_deref()
            .map_or(format!("pushed to {}", o.registry), |l| format!(
                "loaded into {l}"
            ))
    );
    let lg = images.loadgen();
    images::loadgen(&sh, engine, &o.root, &o.oha, &lg)
        .and_then(|_| images::publish(&sh, engine, &o.root, &lg, o.load.as_deref()))
        .context("the load-generator image")?;
    let mut rows: Vec<RowResult> = m.rows.iter().map(RowResult::new).collect();
    for (i, row) in m.rows.iter().enumerate() {
        let tag = images.server(row);
        let built = images::server(&sh, engine, &o.root, row, &tag).and_then(|info| {
            if !o.dry_run {
                eprintln!(
                    "==> {tag}: {} (user {}, entrypoint {})",
                    info.size, info.user, info.entrypoint
                );
            }
            images::publish(&sh, engine, &o.root, &tag, o.load.as_deref())
        });
        if let Err(e) = built {
            rows[i].failures.push(format!("image: {e:#}"));
        }
    }

    let mut oha_version: Option<String> = None;
    for rep in 1..=m.load.repetitions {
        for (i, row) in m.rows.iter().enumerate() {
            if !rows[i].failures.is_empty() {
                continue;
            }
            eprintln!(
                "[{:>5.1} min] repetition {rep}/{}, row {}/{} {:?}",
                started.elapsed().as_secs_f64() / 60.0,
                m.load.repetitions,
                i + 1,
                m.rows.len(),
                row.name
            );
            let hints: BTreeMap<String, f64> = rows[i]
                .workloads
                .iter()
                .filter_map(|w| {
                    w.searches
                        .iter()
                        .map(|s| s.qps)
                        .filter(|q| *q > 0.0)
                        .reduce(f64::max)
                        .map(|q| (w.name.clone(), q))
                })
                .collect();
            let result = measure_row(o, &kube, &images, row, rep, hints, &raw);
            // Tear the row down whatever happened, so the next starts clean.
            let dir = o.overlays.join(row.slug());
            let teardown = sh.run(&[
                "kubectl",
                "delete",
                "-f",
                &dir.join("rendered.yaml").to_string_lossy(),
                "--ignore-not-found",
                "--wait",
                &format!("--timeout={}s", o.timeout.as_secs()),
            ]);
            match result {
                Ok(report) => {
                    oha_version.get_or_insert_with(|| report.oha.clone());
                    merge(&mut rows[i], report)
                }
                Err(e) => {
                    let msg = format!("repetition {rep}: {e:#}");
                    eprintln!("!!! row {:?} failed: {msg}", row.name);
                    rows[i].failures.push(msg);
                }
            }
            if let Err(e) = teardown {
                rows[i].failures.push(format!("teardown: {e:#}"));
            }
        }
    }

    let mut summary = summary(
        m,
        &o.root,
        &o.matrix_path,
        o.quick,
        &server_version,
        started.elapsed().as_secs_f64(),
        rows,
    )?;
    if let Some(v) = oha_version {
        summary.environment.oha = format!("{v} (load-generator image)");
    }
    if !o.dry_run {
        runner::write_outputs(&o.out, o.readme.as_deref(), &raw, &summary)?;
    }
    Ok(summary)
}

/// A Kubernetes run's summary: what the local target records, with the cluster in
/// place of this machine, and no pgbench line.
pub fn summary(
    m: &Matrix,
    root: &Path,
    matrix_path: &Path,
    quick: bool,
    cluster: &str,
    elapsed_secs: f64,
    rows: Vec<RowResult>,
) -> Result<Summary> {
    let l = &m.load;
    let env = Environment {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        git_commit: environment::git_commit(root),
        target: "k8s".into(),
        cpu_model: format!("Kubernetes {cluster}"),
        cpus: 0,
        memory_gib: 0.0,
        kernel: String::new(),
        rustc: environment::rustc(root),
        postgres: "postgres:15 (StatefulSet)".into(),
        oha: "oha (load-generator image)".into(),
        pgbench: String::new(),
        users: l.users,
        quick,
        matrix_file: matrix_path
            .file_name()
            .map_or("matrix.toml".into(), |f| f.to_string_lossy().to_string()),
        duration_secs: l.duration_secs,
        repetitions: l.repetitions,
        slo_p99_ms: l.slo_p99_ms,
        error_budget: l.error_budget,
        min_achieved: l.min_achieved,
        connections: l.connections,
        server_cpus: "app pod".into(),
        postgres_cpus: "postgres pod".into(),
        oha_cpus: "loadgen node".into(),
        pool_size: m.local.pool_size,
        elapsed_secs,
    };
    Ok(Summary {
        environment: env,
        workloads: m.workloads.iter().map(|w| w.name.clone()).collect(),
        rows,
        reference: vec![],
        reference_error: None,
        matrix: serde_json::to_value(m)?,
    })
}

/// A Job's log read back as a row's results, as the run does after each Job: for the
/// container test, which runs the load-generator image outside a cluster.
pub fn ingest(m: &Matrix, report: Report, applied: i64) -> Result<Vec<RowResult>> {
    let mut report = report;
    if let Some(e) = &report.error {
        bail!("the load generator could not measure: {e}");
    }
    let row = m
        .rows
        .iter()
        .find(|r| r.name == report.row)
        .with_context(|| format!("the report is for row {:?}, not in the matrix", report.row))?;
    check_job_writes(&mut report, applied);
    let mut rows: Vec<RowResult> = m.rows.iter().map(RowResult::new).collect();
    let i = m.rows.iter().position(|r| r == row).unwrap_or(0);
    merge(&mut rows[i], report);
    Ok(rows)
}

/// The plan of one Job: one row (the first selected), one repetition, every workload.
pub fn plan(m: &Matrix, rep: u32) -> Result<Plan> {
    let row = m.rows.first().context("no row selected")?;
    Ok(Plan {
        row: row.clone(),
        load: m.load.clone(),
        workloads: m.workloads.clone(),
        repetition: rep,
        hints: BTreeMap::new(),
    })
}

/// CPU time in µs from cgroup v2 `cpu.stat` (`usage_usec`) or v1 `cpuacct.usage` (ns).
fn cgroup_cpu_usec(text: &str) -> Option<u64> {
    if let Some(v) = text.lines().find_map(|l| l.strip_prefix("usage_usec ")) {
        return v.trim().parse().ok();
    }
    text.trim().parse::<u64>().ok().map(|ns| ns / 1000)
}

/// Adds one Job's searches to the row.
pub fn merge(row: &mut RowResult, report: Report) {
    for (name, search) in report.searches {
        match row.workloads.iter_mut().find(|w| w.name == name) {
            Some(w) => w.searches.push(search),
            None => row.workloads.push(WorkloadResult {
                name,
                searches: vec![search],
            }),
        }
    }
}

/// The database's writes over the whole Job against every PATCH the Job sent: a write
/// acknowledged but not applied (or applied twice) fails the row's integrity.
pub fn check_job_writes(report: &mut Report, applied: i64) {
    let t = report.tally;
    let i = check_integrity(t.acked, t.unacked, Some(applied), (0, t.acked), None, 0);
    if i.ok {
        return;
    }
    // The failure is recorded on the Job's most write-heavy search.
    if let Some((_, s)) = report
        .searches
        .iter_mut()
        .max_by_key(|(_, s)| s.writes_checked)
    {
        s.integrity_failures
            .push(format!("over the whole Job: {}", i.message));
    }
}

fn measure_row(
    o: &Options,
    kube: &Kube,
    images: &Images,
    row: &Row,
    rep: u32,
    hints: BTreeMap<String, f64>,
    raw: &Path,
) -> Result<Report> {
    let m = &o.matrix;
    let plan = Plan {
        row: row.clone(),
        load: m.load.clone(),
        workloads: m.workloads.clone(),
        repetition: rep,
        hints,
    };
    let dir = k8s::write_overlay(
        &o.root,
        &o.overlays,
        m,
        row,
        images,
        &serde_json::to_string_pretty(&plan)?,
    )?;
    let yaml = k8s::render(&dir)?;
    k8s::check_rendered(&yaml, row, images).with_context(|| format!("row {:?}", row.name))?;
    std::fs::write(dir.join("rendered.yaml"), &yaml)?;
    let parts = k8s::split(&yaml)?;
    let files: Vec<PathBuf> = [
        ("stack", &parts.stack),
        ("seed", &parts.seed),
        ("app", &parts.app),
        ("loadgen", &parts.loadgen),
    ]
    .iter()
    .map(|(name, text)| {
        let f = dir.join(format!("{name}.yaml"));
        std::fs::write(&f, text).map(|_| f)
    })
    .collect::<std::io::Result<_>>()?;
    if o.dry_run {
        println!(
            "# row {:?} ({}), repetition {rep}: overlay {} rendered and checked",
            row.name,
            row.features_label(),
            dir.display()
        );
    }
    // PostgreSQL first, then the data, then the app (its prepared statements must see
    // the seeded table), then the load.
    kube.apply(&files[0])?;
    kube.rollout("statefulset/postgres", o.timeout)?;
    let mut settings = m.postgres.clone();
    settings.extend(row.postgres.clone());
    kube.apply_settings(&settings)?;
    kube.apply(&files[1])?;
    kube.wait_job("perflab-seed", o.timeout)?;
    kube.apply(&files[2])?;
    kube.rollout("deployment/perflab", o.timeout)?;
    let before = kube.applied_writes()?;
    let (pg0, t0) = (kube.postgres_cpu_usec(), Instant::now());
    kube.apply(&files[3])?;
    // The Job's own deadline (activeDeadlineSeconds) bounds the search; wait a bit more.
    kube.wait_job("perflab-loadgen", Duration::from_secs(3700))?;
    let (pg1, wall) = (kube.postgres_cpu_usec(), t0.elapsed().as_secs_f64());
    let log = kube.ctl(&["logs", "job/perflab-loadgen"])?;
    let after = kube.applied_writes()?;
    if o.dry_run {
        return Ok(Report {
            row: row.name.clone(),
            repetition: rep,
            oha: String::new(),
            searches: vec![],
            tally: Default::default(),
            error: None,
        });
    }
    std::fs::write(
        raw.join(format!("rep{rep}-{}-loadgen.log", row.slug())),
        &log,
    )?;
    let mut report = Report::from_log(&log)?;
    if let Some(e) = &report.error {
        bail!("the load generator could not measure: {e}");
    }
    check_job_writes(&mut report, after - before);
    // PostgreSQL's CPU is only visible from its own pod: averaged over the whole Job.
    if let (Some(a), Some(b)) = (pg0, pg1) {
        let cores = b.saturating_sub(a) as f64 / 1e6 / wall.max(1e-3);
        for (_, s) in &mut report.searches {
            s.cpu_postgres_job = Some(cores);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Tally;

    fn search(writes: u64) -> SearchResult {
        serde_json::from_value(serde_json::json!({
            "repetition": 1, "qps": 100.0, "offered": 100.0, "p99_ms": 3.0, "get_share": 0.9,
            "cpu_server": null, "cpu_postgres": null, "cpu_oha": 0.1, "server_peak_rss_kib": null,
            "limit": null, "steps": 3, "integrity_failures": [], "writes_checked": writes
        }))
        .unwrap()
    }

    fn report(acked: u64, unacked: u64) -> Report {
        Report {
            row: "r".into(),
            repetition: 1,
            oha: String::new(),
            searches: vec![
                ("read-heavy".into(), search(10)),
                ("write-heavy".into(), search(90)),
            ],
            tally: Tally { acked, unacked },
            error: None,
        }
    }

    #[test]
    fn a_job_whose_writes_add_up_passes() {
        let mut r = report(100, 0);
        check_job_writes(&mut r, 100);
        assert!(r
            .searches
            .iter()
            .all(|(_, s)| s.integrity_failures.is_empty()));
        let mut r = report(100, 3);
        check_job_writes(&mut r, 102);
        assert!(r
            .searches
            .iter()
            .all(|(_, s)| s.integrity_failures.is_empty()));
    }

    #[test]
    fn lost_or_phantom_writes_fail_the_row() {
        for applied in [99, 104] {
            let mut r = report(100, 3);
            check_job_writes(&mut r, applied);
            let failures: Vec<_> = r
                .searches
                .iter()
                .flat_map(|(_, s)| &s.integrity_failures)
                .collect();
            assert_eq!(failures.len(), 1, "applied {applied}");
            assert!(failures[0].contains("whole Job"));
        }
    }

    #[test]
    fn reads_cgroup_cpu_time() {
        assert_eq!(
            cgroup_cpu_usec("usage_usec 1500\nuser_usec 1000\n"),
            Some(1500)
        );
        assert_eq!(cgroup_cpu_usec("2500000\n"), Some(2500));
        assert_eq!(cgroup_cpu_usec(""), None);
    }

    #[test]
    fn merging_keeps_workloads_apart() {
        let mut row = RowResult::new(&Row {
            name: "r".into(),
            features: vec![],
            index: true,
            note: None,
            postgres: BTreeMap::new(),
        });
        merge(&mut row, report(1, 0));
        merge(&mut row, report(1, 0));
        assert_eq!(row.workloads.len(), 2);
        assert!(row.workloads.iter().all(|w| w.searches.len() == 2));
    }
}
