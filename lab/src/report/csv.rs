//! results.csv: a row per matrix row and workload.
use super::*;

use crate::measure::stats::spread;
use crate::results::{CommonLoad, Summary};

/// The columns of `results.csv`, one line per row × workload.
pub const CSV_HEADER: &str = "row,features,index,workload,repetitions,capacity_median,capacity_min,capacity_max,p99_ms_at_capacity,common_offered,common_reduced,server_us_per_request,server_user_us_per_request,server_system_us_per_request,postgres_us_per_request,oha_us_per_request,common_p50_ms,common_p90_ms,common_p99_ms,common_p999_ms,writes_checked,integrity_failures";

/// `results/<run>/results.csv`: every numeric column of the table and more, medians
/// over the repetitions (empty where not measured), for spreadsheets and scripts.
pub fn csv(s: &Summary) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    let num = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.3}"));
    let text = |t: &str| {
        if t.contains([',', '"', '\n']) {
            format!("\"{}\"", t.replace('"', "\"\""))
        } else {
            t.to_string()
        }
    };
    for row in &s.rows {
        for w in &row.workloads {
            let caps: Vec<f64> = w.searches.iter().map(|x| x.qps).collect();
            let cap = spread(&caps);
            let med = |f: &dyn Fn(&crate::results::SearchResult) -> Option<f64>| {
                spread(&w.searches.iter().filter_map(f).collect::<Vec<_>>()).map(|m| m.median)
            };
            let common =
                |f: &dyn Fn(&CommonLoad) -> Option<f64>| med(&|x| x.common.as_ref().and_then(f));
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                text(&row.name),
                text(&match &row.external {
                    Some(_) => "external".to_string(),
                    None => row.features.join(" "),
                }),
                u8::from(row.index),
                text(&w.name),
                w.searches.len(),
                num(cap.map(|c| c.median)),
                num(cap.map(|c| c.min)),
                num(cap.map(|c| c.max)),
                num(med(&|x| x.p99_ms)),
                num(common(&|c| Some(c.offered))),
                u8::from(
                    w.searches
                        .iter()
                        .any(|x| x.common.as_ref().is_some_and(|c| c.reduced))
                ),
                num(common(&|c| c.server_us_per_request)),
                num(common(&|c| c.server_user_us_per_request)),
                num(common(&|c| c.server_system_us_per_request)),
                num(common(&|c| c.postgres_us_per_request)),
                num(common(&|c| c.oha_us_per_request)),
                num(common(&|c| c.p50_ms)),
                num(common(&|c| c.p90_ms)),
                num(common(&|c| c.p99_ms)),
                num(common(&|c| c.p999_ms)),
                w.searches.iter().map(|x| x.writes_checked).sum::<u64>(),
                w.searches
                    .iter()
                    .map(|x| x.integrity_failures.len())
                    .sum::<usize>(),
            );
        }
    }
    out
}
