//! results.csv: a row per matrix row and workload, written from a typed record (its
//! header is the record's field names, so a column and its name cannot drift apart).
use serde::Serialize;

use crate::measure::stats::spread;
use crate::results::{CommonLoad, RowResult, SearchResult, Summary, WorkloadResult};

/// One line of `results.csv`: medians over the repetitions (None: not measured,
/// written empty).
#[derive(Debug, Serialize)]
pub struct CsvRow {
    pub row: String,
    /// The row's features, space-separated ("external" for a service row).
    pub features: String,
    pub index: u8,
    pub workload: String,
    pub repetitions: usize,
    pub capacity_median: Option<f64>,
    pub capacity_min: Option<f64>,
    pub capacity_max: Option<f64>,
    pub p99_ms_at_capacity: Option<f64>,
    pub common_offered: Option<f64>,
    /// 1 where a repetition ran the common load at half its capacity instead.
    pub common_reduced: u8,
    pub server_us_per_request: Option<f64>,
    pub server_user_us_per_request: Option<f64>,
    pub server_system_us_per_request: Option<f64>,
    pub postgres_us_per_request: Option<f64>,
    pub oha_us_per_request: Option<f64>,
    pub common_p50_ms: Option<f64>,
    pub common_p90_ms: Option<f64>,
    pub common_p99_ms: Option<f64>,
    pub common_p999_ms: Option<f64>,
    pub writes_checked: u64,
    pub integrity_failures: usize,
}

impl CsvRow {
    fn of(row: &RowResult, w: &WorkloadResult) -> CsvRow {
        let caps: Vec<f64> = w.searches.iter().map(|x| x.qps).collect();
        let cap = spread(&caps);
        let med = |f: &dyn Fn(&SearchResult) -> Option<f64>| {
            spread(&w.searches.iter().filter_map(f).collect::<Vec<_>>()).map(|m| m.median)
        };
        let common =
            |f: &dyn Fn(&CommonLoad) -> Option<f64>| med(&|x| x.common.as_ref().and_then(f));
        // Three decimals, as the table's sources have it.
        let round = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
        CsvRow {
            row: row.name.clone(),
            features: match &row.external {
                Some(_) => "external".to_string(),
                None => row.features.join(" "),
            },
            index: u8::from(row.index),
            workload: w.name.clone(),
            repetitions: w.searches.len(),
            capacity_median: round(cap.map(|c| c.median)),
            capacity_min: round(cap.map(|c| c.min)),
            capacity_max: round(cap.map(|c| c.max)),
            p99_ms_at_capacity: round(med(&|x| x.p99_ms)),
            common_offered: round(common(&|c| Some(c.offered))),
            common_reduced: u8::from(
                w.searches
                    .iter()
                    .any(|x| x.common.as_ref().is_some_and(|c| c.reduced)),
            ),
            server_us_per_request: round(common(&|c| c.server_us_per_request)),
            server_user_us_per_request: round(common(&|c| c.server_user_us_per_request)),
            server_system_us_per_request: round(common(&|c| c.server_system_us_per_request)),
            postgres_us_per_request: round(common(&|c| c.postgres_us_per_request)),
            oha_us_per_request: round(common(&|c| c.oha_us_per_request)),
            common_p50_ms: round(common(&|c| c.p50_ms)),
            common_p90_ms: round(common(&|c| c.p90_ms)),
            common_p99_ms: round(common(&|c| c.p99_ms)),
            common_p999_ms: round(common(&|c| c.p999_ms)),
            writes_checked: w.searches.iter().map(|x| x.writes_checked).sum(),
            integrity_failures: w.searches.iter().map(|x| x.integrity_failures.len()).sum(),
        }
    }
}

/// `results/<run>/results.csv`: every numeric column of the table and more, for
/// spreadsheets and scripts.
pub fn csv(s: &Summary) -> String {
    let mut out = csv::Writer::from_writer(Vec::new());
    for row in &s.rows {
        for w in &row.workloads {
            // Writing into memory fails only on a record serde cannot flatten: none here.
            out.serialize(CsvRow::of(row, w))
                .expect("a CSV record of plain fields");
        }
    }
    let bytes = out.into_inner().expect("flushing into memory cannot fail");
    String::from_utf8(bytes).expect("the records are UTF-8 strings and numbers")
}
