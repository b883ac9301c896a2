//! The experiment, written once for both targets: build every row, then for each
//! repetition and each row (interleaved, so that drift of the machine spreads over all
//! rows) measure every workload with hints from the earlier repetitions, tear the row
//! down, and add the target's reference line; record the environment; write the
//! outputs. A row that fails (its build, its start, its features, a measurement) is
//! reported as failed and the run goes on.
//!
//! A target ([`Target`]) answers only how to prepare, how to measure one row once, and
//! how to tear it down: `crate::local` on this machine, `crate::k8s` on a cluster.
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::environment;
use crate::matrix::{Matrix, Row};
use crate::report;
use crate::results::{
    Environment, Host, ReferenceResult, RowResult, SearchResult, Summary, WorkloadResult,
};

/// What a run is asked to do, whatever the target.
pub struct Experiment {
    pub root: PathBuf,
    pub matrix_path: PathBuf,
    pub matrix: Matrix,
    pub quick: bool,
    /// Where results.md, the charts and results/<stamp>/ go.
    pub out: PathBuf,
    /// The README whose results block is replaced.
    pub readme: Option<PathBuf>,
}

/// One row, one repetition, as the experiment hands it to a target.
pub struct RowRun<'a> {
    pub row: &'a Row,
    pub repetition: u32,
    /// The run's PostgreSQL settings with the row's own on top.
    pub settings: BTreeMap<String, String>,
    /// Best QPS of earlier repetitions, by workload: where a search may start.
    pub hints: BTreeMap<String, f64>,
    /// This run's results folder.
    pub raw: &'a Path,
    pub say: &'a dyn Fn(&str),
}

/// Software versions a target knows once the run is over.
pub struct Software {
    pub postgres: String,
    pub oha: String,
}

/// Where the experiment runs.
pub trait Target {
    /// Builds what the rows need (binaries, images) and gets the target ready. Returns,
    /// per row, why it cannot be measured (`None`: it can).
    fn prepare(&mut self, rows: &[Row], raw: &Path) -> Result<Vec<Option<String>>>;
    /// Measures every workload of one row once: a search per workload, by name.
    fn measure(&mut self, run: &RowRun) -> Result<Vec<(String, SearchResult)>>;
    /// Removes what the row left (called whatever `measure` returned).
    fn teardown(&mut self, _row: &Row) -> Result<()> {
        Ok(())
    }
    /// The database's own ceiling after each repetition, where the target has one.
    fn reference(
        &mut self,
        _rep: u32,
        _raw: &Path,
        _say: &dyn Fn(&str),
    ) -> Option<Result<Vec<ReferenceResult>>> {
        None
    }
    /// Every row side by side in randomized blocks (`[blocks]`), where the target can
    /// run them: the result and the rows that could not take part (name, why).
    fn blocks(
        &mut self,
        _rows: &[Row],
        _raw: &Path,
        _say: &dyn Fn(&str),
    ) -> Option<Result<crate::blocks::Outcome>> {
        None
    }
    fn host(&self) -> Host;
    fn software(&self) -> Software;
    /// A dry run prints what it would do and writes no results.
    fn dry_run(&self) -> bool {
        false
    }
}

/// Progress lines with elapsed time and an estimate of what is left. When stderr is a
/// terminal, a progress bar (rows × repetitions done, the ETA, the latest step) stays
/// under the lines; otherwise the plain lines alone.
struct Clock {
    started: Instant,
    measuring: Option<Instant>,
    done: usize,
    total: usize,
    bar: Option<indicatif::ProgressBar>,
}

impl Clock {
    fn new(started: Instant, total: usize) -> Self {
        use std::io::IsTerminal as _;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            let style = indicatif::ProgressStyle::with_template(
                "[{elapsed}] {bar:24} {pos}/{len} row runs, ETA {eta}  {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Clock {
            started,
            measuring: Some(Instant::now()),
            done: 0,
            total,
            bar,
        }
    }

    fn finished_one(&mut self) {
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done as u64);
        }
    }

    fn say(&self, what: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let measuring = self.measuring.map_or(0.0, |m| m.elapsed().as_secs_f64());
        let left = if self.done > 0 && self.done < self.total {
            let per = measuring / self.done as f64;
            format!(
                ", ~{:.0} min left",
                per * (self.total - self.done) as f64 / 60.0
            )
        } else {
            String::new()
        };
        let line = format!("[{:>5.1} min{left}] {what}", elapsed / 60.0);
        match &self.bar {
            Some(bar) => {
                bar.set_message(what.trim().to_string());
                bar.println(line);
            }
            None => {
                eprintln!("{line}");
                let _ = std::io::stderr().flush();
            }
        }
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The run's PostgreSQL settings with the row's own on top.
pub fn settings_for(m: &Matrix, row: &Row) -> BTreeMap<String, String> {
    let mut settings = m.postgres.clone();
    settings.extend(row.postgres.clone());
    settings
}

/// The statements that make `settings` the cluster's, whatever earlier rows set:
/// `ALTER SYSTEM RESET ALL`, one `ALTER SYSTEM SET` each, a reload. Both targets run
/// these, then [`pending_restart_sql`].
pub fn settings_sql(settings: &BTreeMap<String, String>) -> Vec<String> {
    let mut v = vec!["ALTER SYSTEM RESET ALL".to_string()];
    for (name, value) in settings {
        v.push(format!(
            "ALTER SYSTEM SET {name} = '{}'",
            value.replace('\'', "''")
        ));
    }
    v.push("SELECT pg_reload_conf()".into());
    v
}

/// Like [`settings_sql`], touching only `names` (a cluster that is not ours): each is
/// reset (what earlier rows set goes), then `settings` are set, then a reload.
pub fn scoped_settings_sql(settings: &BTreeMap<String, String>, names: &[String]) -> Vec<String> {
    let mut v: Vec<String> = names
        .iter()
        .map(|n| format!("ALTER SYSTEM RESET {n}"))
        .collect();
    v.extend(settings_sql(settings).into_iter().skip(1));
    v
}

/// A query answering the names among `settings` that wait for a restart, comma
/// separated ('' when none). Only settings of ours count: a cluster started with
/// command-line options reports those as pending after any reload.
pub fn pending_restart_sql(settings: &BTreeMap<String, String>) -> String {
    let names: Vec<String> = settings
        .keys()
        .map(|k| format!("'{}'", k.replace('\'', "''")))
        .collect();
    let list = if names.is_empty() {
        "NULL".to_string()
    } else {
        names.join(", ")
    };
    format!(
        "SELECT coalesce(string_agg(name, ','), '') FROM pg_settings \
         WHERE pending_restart AND name IN ({list})"
    )
}

/// The error for settings that would need a restart, if any.
pub fn refuse_pending(pending: &str) -> Result<()> {
    let pending = pending.trim();
    anyhow::ensure!(
        pending.is_empty(),
        "these settings need a PostgreSQL restart and cannot be set per run: {pending}"
    );
    Ok(())
}

/// Best QPS of a row's earlier repetitions, by workload.
fn hints(row: &RowResult) -> BTreeMap<String, f64> {
    row.workloads
        .iter()
        .filter_map(|w| {
            w.searches
                .iter()
                .map(|s| s.qps)
                .filter(|q| *q > 0.0)
                .reduce(f64::max)
                .map(|q| (w.name.clone(), q))
        })
        .collect()
}

/// Adds one measurement's searches to the row, keeping workloads apart.
pub fn merge(row: &mut RowResult, searches: Vec<(String, SearchResult)>) {
    for (name, search) in searches {
        match row.workloads.iter_mut().find(|w| w.name == name) {
            Some(w) => w.searches.push(search),
            None => {
                let mut w = WorkloadResult::new(&name);
                w.searches.push(search);
                row.workloads.push(w);
            }
        }
    }
}

/// `results/<UTC stamp of the start>/` under `out`.
fn results_folder(out: &Path, started: &str) -> PathBuf {
    out.join("results").join(started.replace([':', '-'], ""))
}

/// Runs the experiment on `target`.
pub fn run(e: &Experiment, target: &mut dyn Target) -> Result<Summary> {
    let m = &e.matrix;
    let started = Instant::now();
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // The commit the rows are built from: read now, not after a run of hours.
    let commit = environment::git_commit(&e.root);
    let raw = results_folder(&e.out, &started_at);
    if !target.dry_run() {
        std::fs::create_dir_all(&raw).with_context(|| format!("creating {}", raw.display()))?;
        eprintln!("==> results of this run go to {}", raw.display());
    }
    let mut rows: Vec<RowResult> = m.rows.iter().map(RowResult::new).collect();
    for (row, why) in rows.iter_mut().zip(target.prepare(&m.rows, &raw)?) {
        if let Some(why) = why {
            row.failures.push(why);
        }
    }
    let mut clock = Clock::new(started, m.rows.len() * m.load.repetitions as usize);
    let mut blocks = None;
    if m.blocks.blocks > 0 && !target.dry_run() {
        let ready: Vec<Row> = m
            .rows
            .iter()
            .zip(&rows)
            .filter(|(_, r)| r.failures.is_empty())
            .map(|(row, _)| row.clone())
            .collect();
        let say = |s: &str| clock.say(s);
        match target.blocks(&ready, &raw, &say) {
            Some(Ok((b, failed))) => {
                for (name, why) in failed {
                    if let Some(r) = rows.iter_mut().find(|r| r.name == name) {
                        r.failures.push(why);
                    }
                }
                clock.say(&format!(
                    "blocks done: {} windows in {:.1} min",
                    b.windows.len(),
                    b.elapsed_secs / 60.0
                ));
                blocks = Some(b);
            }
            Some(Err(err)) => eprintln!("!!! the blocks failed: {err:#}"),
            None => {}
        }
    }
    let mut reference = Vec::new();
    let mut reference_error = None;
    for rep in 1..=m.load.repetitions {
        for (i, row) in m.rows.iter().enumerate() {
            if rows[i].failures.is_empty() {
                clock.say(&format!(
                    "repetition {rep}/{}, row {}/{} {:?}",
                    m.load.repetitions,
                    i + 1,
                    m.rows.len(),
                    row.name
                ));
                measure_row(e, target, row, rep, &raw, &clock, &mut rows[i]);
            }
            clock.finished_one();
        }
        let say = |s: &str| clock.say(s);
        let measured = if e.matrix.load.reference {
            target.reference(rep, &raw, &say)
        } else {
            None
        };
        match measured {
            Some(Ok(mut r)) => reference.append(&mut r),
            Some(Err(err)) => {
                eprintln!("!!! the reference failed: {err:#}");
                reference_error = Some(format!("{err:#}"));
            }
            None => {}
        }
    }
    let mut environment = environment(
        e,
        target.host(),
        target.software(),
        started.elapsed().as_secs_f64(),
    );
    environment.git_commit = commit;
    environment.started = Some(started_at);
    let mut summary = Summary {
        schema_version: crate::results::SCHEMA_VERSION,
        environment,
        workloads: m.workloads.iter().map(|w| w.name.clone()).collect(),
        rows,
        reference,
        reference_error,
        matrix: serde_json::to_value(m)?,
        blocks,
    };
    summary.derive();
    if !target.dry_run() {
        write_outputs(&e.out, e.readme.as_deref(), &raw, &summary)?;
    }
    Ok(summary)
}

/// One row once: measure, tear down whatever happened, record.
fn measure_row(
    e: &Experiment,
    target: &mut dyn Target,
    row: &Row,
    rep: u32,
    raw: &Path,
    clock: &Clock,
    out: &mut RowResult,
) {
    let say = |s: &str| clock.say(s);
    let run = RowRun {
        row,
        repetition: rep,
        settings: settings_for(&e.matrix, row),
        hints: hints(out),
        raw,
        say: &say,
    };
    let measured = target.measure(&run);
    let teardown = target.teardown(row);
    match measured {
        Ok(searches) => merge(out, searches),
        Err(err) => {
            let msg = format!("repetition {rep}: {err:#}");
            eprintln!("!!! row {:?} failed: {msg}", row.name);
            out.failures.push(msg);
        }
    }
    if let Err(err) = teardown {
        out.failures.push(format!("teardown: {err:#}"));
    }
}

/// What the run ran on and how it measured.
pub fn environment(
    e: &Experiment,
    host: Host,
    software: Software,
    elapsed_secs: f64,
) -> Environment {
    let (m, l) = (&e.matrix, &e.matrix.load);
    Environment {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        started: None,
        git_commit: environment::git_commit(&e.root),
        host,
        rustc: environment::rustc(&e.root),
        postgres: software.postgres,
        oha: software.oha,
        users: l.users,
        quick: e.quick,
        matrix_file: e
            .matrix_path
            .file_name()
            .map_or("matrix.toml".into(), |f| f.to_string_lossy().to_string()),
        duration_secs: l.duration_secs,
        repetitions: l.repetitions,
        slo_p99_ms: l.slo_p99_ms,
        error_budget: l.error_budget,
        min_achieved: l.min_achieved,
        connections: l.connections,
        pool_size: m.local.pool_size,
        elapsed_secs,
    }
}

/// results/<stamp>/summary.json and steps.json(.gz), then what [`render_outputs`] draws.
pub fn write_outputs(
    out: &Path,
    readme: Option<&Path>,
    raw: &Path,
    summary: &Summary,
) -> Result<()> {
    std::fs::write(
        raw.join("summary.json"),
        serde_json::to_string_pretty(summary)?,
    )?;
    let steps = bundle_steps(raw)?;
    render_outputs(out, readme, raw, summary)?;
    eprintln!(
        "==> wrote {} and {}",
        raw.join("summary.json").display(),
        steps.display()
    );
    Ok(())
}

/// What is drawn from a run's summary and steps: results/<stamp>/results.csv,
/// results.md, the four charts and the README's block (`lab render` redraws them from
/// a committed run).
pub fn render_outputs(
    out: &Path,
    readme: Option<&Path>,
    raw: &Path,
    summary: &Summary,
) -> Result<()> {
    std::fs::write(raw.join("results.csv"), report::csv(summary))?;
    std::fs::write(out.join("results.md"), report::results_md(summary))?;
    let steps = crate::charts::read_steps(raw)?;
    let charts = crate::charts::write_all(out, summary, steps.as_ref())?;
    // The one chart of earlier versions, now the capacity chart's.
    let _ = std::fs::remove_file(out.join("results.svg"));
    if let Some(readme) = readme {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("reading {}", readme.display()))?;
        let at = report::Block::new(&summary.environment.matrix_file, out, readme);
        std::fs::write(readme, report::update_readme(&text, summary, &at)?)?;
    }
    eprintln!(
        "==> wrote {}, {} charts ({}) and {}",
        out.join("results.md").display(),
        charts.len(),
        out.join("results-*.svg").display(),
        raw.join("results.csv").display(),
    );
    Ok(())
}

/// Above this size the per-step data are committed gzip-compressed.
const STEPS_GZIP_ABOVE: usize = 1 << 20;

/// Every search's steps of a run (the `rep*-steps.json` files) in one file to commit:
/// `steps.json`, an object from "rep-row-workload" to that search's steps, gzipped as
/// `steps.json.gz` when over 1 MiB. Returns its path.
pub fn bundle_steps(raw: &Path) -> Result<std::path::PathBuf> {
    let mut all = serde_json::Map::new();
    let mut names: Vec<_> = std::fs::read_dir(raw)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|n| n.starts_with("rep") && n.ends_with("-steps.json"))
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read_to_string(raw.join(&name))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {name}"))?;
        all.insert(name.trim_end_matches("-steps.json").to_string(), value);
    }
    let text = serde_json::to_string(&serde_json::Value::Object(all))?;
    let (plain, gz) = (raw.join("steps.json"), raw.join("steps.json.gz"));
    let _ = std::fs::remove_file(&plain);
    let _ = std::fs::remove_file(&gz);
    if text.len() > STEPS_GZIP_ABOVE {
        use std::io::Write as _;
        let mut enc =
            flate2::write::GzEncoder::new(std::fs::File::create(&gz)?, flate2::Compression::best());
        enc.write_all(text.as_bytes())?;
        enc.finish()?;
        Ok(gz)
    } else {
        std::fs::write(&plain, text)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_of_every_search_go_into_one_file_compressed_when_large() {
        let dir = std::env::temp_dir().join(format!("lab-steps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("rep1-pool-read-heavy-steps.json"),
            r#"[{"offered":100.0}]"#,
        )
        .unwrap();
        std::fs::write(dir.join("rep1-pool-server.log"), "not steps").unwrap();
        let small = bundle_steps(&dir).unwrap();
        assert_eq!(small, dir.join("steps.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&small).unwrap()).unwrap();
        assert_eq!(v["rep1-pool-read-heavy"][0]["offered"], 100.0);
        assert_eq!(v.as_object().unwrap().len(), 1);
        let big = format!("[{}]", vec![r#"{"offered":1.5}"#; 200_000].join(","));
        std::fs::write(dir.join("rep2-pool-write-heavy-steps.json"), big).unwrap();
        let gz = bundle_steps(&dir).unwrap();
        assert_eq!(gz, dir.join("steps.json.gz"));
        assert!(!small.exists(), "one file per run");
        let mut text = String::new();
        use std::io::Read as _;
        flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["rep2-pool-write-heavy"].as_array().unwrap().len(),
            200_000
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn search(qps: f64) -> SearchResult {
        serde_json::from_value(serde_json::json!({
            "repetition": 1, "qps": qps, "offered": qps, "p99_ms": 3.0, "get_share": 0.9,
            "cpu_server": null, "cpu_postgres": null, "cpu_oha": 0.1, "server_peak_rss_kib": null,
            "limit": null, "steps": 3, "integrity_failures": [], "writes_checked": 0
        }))
        .unwrap()
    }

    fn row() -> Row {
        Row {
            name: "r".into(),
            features: vec![],
            index: true,
            note: None,
            postgres: BTreeMap::from([("work_mem".to_string(), "8MB".to_string())]),
            external: None,
            service: None,
            moves: None,
            resources: None,
            workers: None,
            env: BTreeMap::new(),
            cpus: None,
            versus: None,
            users: None,
            ids: crate::scale::Ids::Uniform,
            connections: None,
            postgres_memory_limit: None,
        }
    }

    #[test]
    fn merging_keeps_workloads_apart_and_hints_take_the_best() {
        let mut r = RowResult::new(&row());
        merge(
            &mut r,
            vec![
                ("read".into(), search(100.0)),
                ("write".into(), search(0.0)),
            ],
        );
        merge(
            &mut r,
            vec![
                ("read".into(), search(150.0)),
                ("write".into(), search(40.0)),
            ],
        );
        assert_eq!(r.workloads.len(), 2);
        assert!(r.workloads.iter().all(|w| w.searches.len() == 2));
        let h = hints(&r);
        assert_eq!(h.get("read"), Some(&150.0));
        assert_eq!(h.get("write"), Some(&40.0));
    }

    #[test]
    fn settings_reset_first_and_row_settings_win() {
        let mut m = crate::matrix::Matrix::parse(include_str!("../../matrix.toml")).unwrap();
        m.postgres.insert("work_mem".into(), "4MB".into());
        let s = settings_for(&m, &row());
        assert_eq!(s.get("work_mem").map(String::as_str), Some("8MB"));
        let sql = settings_sql(&BTreeMap::from([("a".to_string(), "it's".to_string())]));
        assert_eq!(
            sql.first().map(String::as_str),
            Some("ALTER SYSTEM RESET ALL")
        );
        assert!(sql.contains(&"ALTER SYSTEM SET a = 'it''s'".to_string()));
        assert_eq!(
            sql.last().map(String::as_str),
            Some("SELECT pg_reload_conf()")
        );
        assert!(pending_restart_sql(&BTreeMap::new()).contains("IN (NULL)"));
        assert!(refuse_pending(" \n").is_ok());
        assert!(refuse_pending("shared_buffers").is_err());
    }
}
