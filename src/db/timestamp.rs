//! `updated_at` as the API writes it, for every value PostgreSQL can hold. A
//! `timestamptz` travels as microseconds since 2000-01-01 UTC, with `i64::MAX` and
//! `i64::MIN` for `infinity` and `-infinity`; its dates run from 4714-11-24 BC to 294276-12-31 AD.
//! Years 0000–9999 are written as RFC 3339 (`2024-05-01T12:00:00.000000Z`); others in
//! ISO 8601's expanded form with a sign and six digits (`+012000-…`, `-004713-…`,
//! astronomical years: 1 BC is year 0); the infinities as PostgreSQL writes them.
//! Nothing here can panic: a formatting panic would take a batch worker down with it.
use std::error::Error;

use tokio_postgres::types::{FromSql, Type};

/// A `timestamptz` (or `timestamp`) value as PostgreSQL sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl<'a> FromSql<'a> for Timestamp {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let bytes: [u8; 8] = raw
            .try_into()
            .map_err(|_| format!("a timestamp is 8 bytes, got {}", raw.len()))?;
        Ok(Self(i64::from_be_bytes(bytes)))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP)
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const DAYS_1970_TO_2000: i64 = 10_957;

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            i64::MAX => return f.write_str("infinity"),
            i64::MIN => return f.write_str("-infinity"),
            _ => {}
        }
        let days = self.0.div_euclid(MICROS_PER_DAY) + DAYS_1970_TO_2000;
        let micros = self.0.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let secs = micros / 1_000_000;
        let (h, m, s, us) = (secs / 3600, secs / 60 % 60, secs % 60, micros % 1_000_000);
        if (0..=9999).contains(&year) {
            write!(f, "{year:04}")?;
        } else {
            write!(f, "{year:+07}")?;
        }
        write!(f, "-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{us:06}Z")
    }
}

/// (year, month, day) of the proleptic Gregorian calendar for days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, in i64 so that every PostgreSQL date fits).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> String {
        Timestamp(micros).to_string()
    }

    #[test]
    fn ordinary_times_are_rfc3339_with_microseconds() {
        assert_eq!(at(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(at(-1), "1999-12-31T23:59:59.999999Z");
        // 2024-02-29T12:34:56.789012Z: a leap day.
        let leap = (8_825 * 86_400 + 12 * 3600 + 34 * 60 + 56) * 1_000_000 + 789_012;
        assert_eq!(at(leap), "2024-02-29T12:34:56.789012Z");
        assert_eq!(
            at(-DAYS_1970_TO_2000 * MICROS_PER_DAY),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn every_value_postgresql_holds_formats_without_panicking() {
        assert_eq!(at(i64::MAX), "infinity");
        assert_eq!(at(i64::MIN), "-infinity");
        // PostgreSQL's own limits: 4714-11-24 BC (Julian day 0) and 294276-12-31.
        assert_eq!(
            at(-211_813_488_000_000_000),
            "-004713-11-24T00:00:00.000000Z"
        );
        assert_eq!(
            at(9_223_371_331_199_999_999),
            "+294276-12-31T23:59:59.999999Z"
        );
        // Past 9999 and before year 0.
        assert!(at(i64::MAX - 1).starts_with('+'));
        assert!(at(i64::MIN + 1).starts_with('-'));
        for micros in [i64::MIN + 1, -1 << 62, 1 << 62, i64::MAX - 1] {
            let _ = at(micros);
        }
    }

    #[test]
    fn decodes_eight_bytes_and_refuses_others() {
        let t = Timestamp::from_sql(&Type::TIMESTAMPTZ, &42i64.to_be_bytes()).unwrap();
        assert_eq!(t, Timestamp(42));
        assert!(Timestamp::from_sql(&Type::TIMESTAMPTZ, &[0; 4]).is_err());
        assert!(<Timestamp as FromSql>::accepts(&Type::TIMESTAMPTZ));
        assert!(!<Timestamp as FromSql>::accepts(&Type::TEXT));
    }
}
