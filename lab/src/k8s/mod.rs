//! The Kubernetes target. `prepare` checks the cluster and builds and publishes one
//! image per row and the load generator's; each row run applies PostgreSQL, its
//! settings (the experiment's statements) and the seed, then the app, then the
//! load-generator Job, which runs the same search and verdicts as the local target
//! inside the cluster (see [`loadgen`]); its result is read back from `kubectl logs`
//! and the Job's writes are checked against the database; `teardown` deletes the row.
//! With `dry_run`, every command is printed instead.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::experiment::{
    pending_restart_sql, refuse_pending, settings_sql, RowRun, Software, Target,
};
use crate::matrix::{Matrix, Row};
use crate::measure::{check_integrity, WriteCounts};
use crate::results::{Host, RowResult, SearchResult};

pub mod images;
pub mod loadgen;
pub mod manifests;
pub mod shell;

use images::Engine;
use loadgen::{Plan, Report};
use manifests::Images;
use shell::Shell;

/// The namespace by default (`--namespace` names another).
pub const NAMESPACE: &str = "perflab";

/// The value of `app.kubernetes.io/managed-by` on what the lab applies: a namespace
/// without it was not made by the lab, which then never applies or deletes it.
pub const MANAGED_BY: &str = "perflab-lab";

/// A namespace name Kubernetes accepts (an RFC 1123 label).
pub fn check_namespace(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!("--namespace {name:?}: a namespace is up to 63 lower-case letters, digits and '-', starting and ending with a letter or digit");
    }
    Ok(())
}

/// What the Kubernetes target needs beyond the experiment.
pub struct Options {
    pub root: PathBuf,
    pub dry_run: bool,
    pub registry: String,
    pub load: Option<String>,
    pub engine: String,
    /// Where the generated overlays go.
    pub overlays: PathBuf,
    /// The oha binary copied into the load-generator image.
    pub oha: PathBuf,
    /// Upper bound for each wait (rollouts, the seed Job).
    pub timeout: Duration,
    /// Where everything goes; a namespace the lab did not make is never applied over
    /// or deleted.
    pub namespace: String,
    /// PostgreSQL's image in place of the base's (checked to be pinned).
    pub postgres_image: Option<String>,
}

struct Kube<'a> {
    sh: &'a Shell,
    namespace: &'a str,
}

impl Kube<'_> {
    fn ctl(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["kubectl", "-n", self.namespace];
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

    /// The row's PostgreSQL settings, with the statements the local target runs too.
    fn apply_settings(&self, settings: &BTreeMap<String, String>) -> Result<()> {
        let mut cmd = vec!["psql", "-U", "postgres", "-v", "ON_ERROR_STOP=1"];
        let statements = settings_sql(settings);
        for s in &statements {
            cmd.extend(["-c", s.as_str()]);
        }
        self.in_postgres(&cmd)?;
        if !self.sh.dry_run {
            std::thread::sleep(Duration::from_millis(200));
        }
        let pending = pending_restart_sql(settings);
        refuse_pending(&self.in_postgres(&["psql", "-U", "postgres", "-tAc", &pending])?)
    }
}

/// The cluster, as the experiment's target.
pub struct Cluster<'a> {
    o: &'a Options,
    m: &'a Matrix,
    sh: Shell,
    images: Images,
    kubernetes: String,
    oha_version: Option<String>,
    /// The namespace exists and was not made by the lab: used as it is, never
    /// applied over or deleted.
    foreign_namespace: bool,
}

impl<'a> Cluster<'a> {
    pub fn new(o: &'a Options, m: &'a Matrix) -> Self {
        Self {
            o,
            m,
            sh: Shell { dry_run: o.dry_run },
            images: Images {
                registry: o.registry.clone(),
                commit: crate::environment::commit(&o.root).tag(),
                postgres: o.postgres_image.clone(),
            },
            kubernetes: "unknown".into(),
            oha_version: None,
            foreign_namespace: false,
        }
    }

    fn kube(&self) -> Kube<'_> {
        Kube {
            sh: &self.sh,
            namespace: &self.o.namespace,
        }
    }

    /// The pre-flight: the cluster answers, a node is labelled and tainted for the load
    /// generator (else its Job never schedules, or other pods land beside oha), and the
    /// namespace is the lab's or free.
    fn check_cluster(&mut self) -> Result<()> {
        let version = self
            .sh
            .run(&["kubectl", "version", "-o", "json"])
            .context("no cluster answers: is KUBECONFIG set?")?;
        let nodes = self.sh.run(&[
            "kubectl",
            "get",
            "nodes",
            "-l",
            &format!("{}=true", manifests::LOADGEN_LABEL),
            "-o",
            "json",
        ])?;
        let namespace = self.sh.run(&[
            "kubectl",
            "get",
            "namespace",
            &self.o.namespace,
            "--ignore-not-found",
            "-o",
            "json",
        ])?;
        if self.o.dry_run {
            self.kubernetes = "(dry run)".into();
            return Ok(());
        }
        loadgen_node(&nodes)?;
        self.foreign_namespace = foreign_namespace(&namespace)?;
        if self.foreign_namespace {
            eprintln!(
                "==> namespace {} was not made by the lab: it is used as it is (its Pod Security level is its own) and left in place at the end",
                self.o.namespace
            );
        }
        self.kubernetes = serde_json::from_str::<serde_json::Value>(&version)
            .ok()
            .and_then(|j| j["serverVersion"]["gitVersion"].as_str().map(String::from))
            .unwrap_or_else(|| "unknown".into());
        Ok(())
    }
}

/// From `kubectl get nodes -l <label>=true -o json`: at least one node carries the
/// load generator's taint too; else the command that makes one.
fn loadgen_node(nodes_json: &str) -> Result<()> {
    let l = manifests::LOADGEN_LABEL;
    let how = format!(
        "prepare one with\n  kubectl label node NODE {l}=true\n  kubectl taint node NODE {l}=true:NoSchedule"
    );
    let v: serde_json::Value =
        serde_json::from_str(nodes_json).context("kubectl get nodes: not JSON")?;
    let items = v["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        bail!("no node is labelled {l}=true: {how}");
    }
    let tainted = items.iter().any(|n| {
        n["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == l && t["value"] == "true" && t["effect"] == "NoSchedule")
        })
    });
    if !tainted {
        bail!("the node labelled {l}=true has no taint {l}=true:NoSchedule, so other pods could run beside the load generator: {how}");
    }
    Ok(())
}

/// PostgreSQL's data claim (the StatefulSet's `data` template, pod 0).
const POSTGRES_CLAIM: &str = "data-postgres-0";

/// From `kubectl get ... -o json` (one object or a list, or nothing): the first object
/// without the lab's `managed-by` label, as `kind/name`.
fn not_ours(listing: &str) -> Result<Option<String>> {
    if listing.trim().is_empty() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(listing).context("kubectl get: not JSON")?;
    let items = match v["items"].as_array() {
        Some(items) => items.clone(),
        None => vec![v],
    };
    Ok(items
        .iter()
        .find(|o| o["metadata"]["labels"]["app.kubernetes.io/managed-by"] != MANAGED_BY)
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        }))
}

/// From `kubectl get namespace NS --ignore-not-found -o json`: whether it exists and
/// lacks the lab's `managed-by` label.
fn foreign_namespace(namespace_json: &str) -> Result<bool> {
    if namespace_json.trim().is_empty() {
        return Ok(false);
    }
    let v: serde_json::Value =
        serde_json::from_str(namespace_json).context("kubectl get namespace: not JSON")?;
    Ok(v["metadata"]["labels"]["app.kubernetes.io/managed-by"] != MANAGED_BY)
}

impl Target for Cluster<'_> {
    /// Images: the load generator's once (without it nothing can be measured), then one
    /// per row (an external row: its peer's, when this repository has its Containerfile;
    /// else its own image, which the cluster pulls); a failed build fails its row.
    fn prepare(&mut self, rows: &[Row], _raw: &Path) -> Result<Vec<Option<String>>> {
        self.check_cluster()?;
        let o = self.o;
        let engine = Engine::choose(&o.engine)?;
        println!(
            "# images: built with {} and {}",
            engine.name(),
            o.load
                .as_deref()
                .map_or(format!("pushed to {}", o.registry), |l| format!(
                    "loaded into {l}"
                ))
        );
        let lg = self.images.loadgen();
        images::loadgen(&self.sh, engine, &o.root, &o.oha, &lg)
            .and_then(|_| images::publish(&self.sh, engine, &o.root, &lg, o.load.as_deref()))
            .context("the load-generator image")?;
        // Two rows may run one image (a peer's variants): built and published once.
        let mut done: Vec<(String, Option<String>)> = Vec::new();
        Ok(rows
            .iter()
            .map(|row| {
                let tag = self.images.server(row);
                if let Some((_, why)) = done.iter().find(|(t, _)| *t == tag) {
                    return why.clone();
                }
                let built = images::row_image(&self.sh, engine, &o.root, row, &tag);
                let why = built
                    .and_then(|info| {
                        // An image lab did not build is the user's: the cluster pulls it.
                        let Some(info) = info else { return Ok(()) };
                        if !o.dry_run {
                            eprintln!(
                                "==> {tag}: {} (user {}, entrypoint {})",
                                info.size, info.user, info.entrypoint
                            );
                        }
                        images::publish(&self.sh, engine, &o.root, &tag, o.load.as_deref())
                    })
                    .err()
                    .map(|e| format!("image: {e:#}"));
                done.push((tag, why.clone()));
                why
            })
            .collect())
    }

    fn measure(&mut self, run: &RowRun) -> Result<Vec<(String, SearchResult)>> {
        let report = measure_row(self, run)?;
        if !report.oha.is_empty() {
            self.oha_version.get_or_insert_with(|| report.oha.clone());
        }
        Ok(report.searches)
    }

    /// Deletes everything the row applied, so the next starts clean (its PostgreSQL
    /// settings go with its StatefulSet).
    fn teardown(&mut self, row: &Row) -> Result<()> {
        let dir = self.o.overlays.join(row.slug());
        let mut files = vec!["objects.yaml"];
        if self.foreign_namespace {
            // The namespace stays, so PostgreSQL's claim must go by itself (the next row
            // starts from an empty data directory, with its own password).
            self.kube().ctl(&[
                "delete",
                "pvc",
                POSTGRES_CLAIM,
                "--ignore-not-found",
                "--wait",
                &format!("--timeout={}s", self.o.timeout.as_secs()),
            ])?;
        } else {
            files.push("namespace.yaml");
        }
        for file in files {
            self.sh.run(&[
                "kubectl",
                "delete",
                "-f",
                &dir.join(file).to_string_lossy(),
                "--ignore-not-found",
                "--wait",
                &format!("--timeout={}s", self.o.timeout.as_secs()),
            ])?;
        }
        Ok(())
    }

    fn host(&self) -> Host {
        Host::Cluster {
            kubernetes: self.kubernetes.clone(),
        }
    }

    fn software(&self) -> Software {
        Software {
            postgres: "15 (StatefulSet)".into(),
            oha: self.oha_version.as_ref().map_or_else(
                || "oha (load-generator image)".into(),
                |v| format!("{v} (load-generator image)"),
            ),
        }
    }

    fn dry_run(&self) -> bool {
        self.o.dry_run
    }
}

/// A Job's log read back as a row's results, as the run does after each Job: for the
/// container test, which runs the load-generator image outside a cluster.
pub fn ingest(m: &Matrix, report: Report, applied: i64) -> Result<Vec<RowResult>> {
    let mut report = report;
    if let Some(e) = &report.error {
        bail!("the load generator could not measure: {e}");
    }
    let i = m
        .rows
        .iter()
        .position(|r| r.name == report.row)
        .with_context(|| format!("the report is for row {:?}, not in the matrix", report.row))?;
    if m.rows[i].writes_to_postgres() {
        check_job_writes(&mut report, applied);
    }
    let mut rows: Vec<RowResult> = m.rows.iter().map(RowResult::new).collect();
    crate::experiment::merge(&mut rows[i], report.searches);
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

/// The database's writes over the whole Job against every PATCH the Job sent: a write
/// acknowledged but not applied (or applied twice) fails the row's integrity.
pub fn check_job_writes(report: &mut Report, applied: i64) {
    let t = report.tally;
    let i = check_integrity(&WriteCounts {
        acked: t.acked,
        unacked: t.unacked,
        applied: Some(applied),
        ..WriteCounts::default()
    });
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

fn measure_row(c: &Cluster, run: &RowRun) -> Result<Report> {
    let (o, m, row, rep) = (c.o, c.m, run.row, run.repetition);
    let kube = c.kube();
    let plan = Plan {
        row: row.clone(),
        load: m.load.clone(),
        workloads: m.workloads.clone(),
        repetition: rep,
        hints: run.hints.clone(),
    };
    let dir = manifests::write_overlay(
        &o.root,
        &o.overlays,
        m,
        row,
        &c.images,
        &serde_json::to_string_pretty(&plan)?,
        &o.namespace,
    )?;
    let yaml = manifests::render(&dir)?;
    manifests::check_rendered(&yaml, row, &c.images)
        .with_context(|| format!("row {:?}", row.name))?;
    std::fs::write(dir.join("rendered.yaml"), &yaml)?;
    let parts = manifests::split(&yaml)?;
    std::fs::write(dir.join("namespace.yaml"), &parts.namespace)?;
    std::fs::write(
        dir.join("objects.yaml"),
        [&parts.stack, &parts.seed, &parts.app, &parts.loadgen]
            .map(String::as_str)
            .concat(),
    )?;
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
    if c.foreign_namespace {
        // Someone else's namespace: nothing of theirs is overwritten.
        let found = kube.sh.run(&[
            "kubectl",
            "get",
            "-f",
            &dir.join("objects.yaml").to_string_lossy(),
            "--ignore-not-found",
            "-o",
            "json",
        ])?;
        let claim = kube.ctl(&[
            "get",
            "pvc",
            POSTGRES_CLAIM,
            "--ignore-not-found",
            "-o",
            "json",
        ])?;
        for listing in [found, claim] {
            if let Some(theirs) = not_ours(&listing)? {
                bail!(
                    "namespace {} holds {theirs}, which the lab did not make: it is not overwritten (choose another --namespace)",
                    o.namespace
                );
            }
        }
    } else {
        kube.apply(&dir.join("namespace.yaml"))?;
    }
    kube.apply(&files[0])?;
    kube.rollout("statefulset/postgres", o.timeout)?;
    kube.apply_settings(&run.settings)?;
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
        run.raw.join(format!("rep{rep}-{}-loadgen.log", row.slug())),
        &log,
    )?;
    let mut report = Report::from_log(&log)?;
    if let Some(e) = &report.error {
        bail!("the load generator could not measure: {e}");
    }
    // The memory-store reference keeps its writes in memory: nothing to count here.
    if row.writes_to_postgres() {
        check_job_writes(&mut report, after - before);
    }
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

    #[test]
    fn the_preflight_wants_a_labelled_and_tainted_node() {
        let node = |taints: &str| {
            format!(
                r#"{{"items": [{{"metadata": {{"name": "n1"}}, "spec": {{"taints": {taints}}}}}]}}"#
            )
        };
        let good = r#"[{"key": "perflab.dev/loadgen", "value": "true", "effect": "NoSchedule"}]"#;
        assert!(loadgen_node(&node(good)).is_ok());
        let e = loadgen_node(r#"{"items": []}"#).unwrap_err().to_string();
        assert!(
            e.contains("kubectl label node NODE perflab.dev/loadgen=true"),
            "{e}"
        );
        let soft =
            r#"[{"key": "perflab.dev/loadgen", "value": "true", "effect": "PreferNoSchedule"}]"#;
        let e = loadgen_node(&node(soft)).unwrap_err().to_string();
        assert!(
            e.contains("kubectl taint node NODE perflab.dev/loadgen=true:NoSchedule"),
            "{e}"
        );
        assert!(loadgen_node(&node("[]")).is_err());
    }

    #[test]
    fn objects_without_the_labs_label_are_someone_elses() {
        assert_eq!(not_ours("").unwrap(), None);
        let ours = r#"{"kind": "PersistentVolumeClaim", "metadata": {"name": "data-postgres-0", "labels": {"app.kubernetes.io/managed-by": "perflab-lab"}}}"#;
        assert_eq!(not_ours(ours).unwrap(), None);
        let list = r#"{"items": [
            {"kind": "Service", "metadata": {"name": "perflab", "labels": {"app.kubernetes.io/managed-by": "perflab-lab"}}},
            {"kind": "StatefulSet", "metadata": {"name": "postgres", "labels": {"app": "theirs"}}}
        ]}"#;
        assert_eq!(
            not_ours(list).unwrap().as_deref(),
            Some("StatefulSet/postgres")
        );
    }

    #[test]
    fn a_namespace_without_the_labs_label_is_someone_elses() {
        assert!(!foreign_namespace("").unwrap(), "absent: the lab makes it");
        let ours = r#"{"metadata": {"labels": {"app.kubernetes.io/managed-by": "perflab-lab"}}}"#;
        assert!(!foreign_namespace(ours).unwrap());
        assert!(foreign_namespace(r#"{"metadata": {"name": "team-a"}}"#).unwrap());
        for bad in ["", "Team", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
        assert!(check_namespace("perf-lab-2").is_ok());
    }
    use crate::measure::driver::Tally;

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
}
