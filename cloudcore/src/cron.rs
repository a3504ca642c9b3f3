//! Cron schedules as CronJobs write them: the five standard fields (minute, hour, day of
//! month, month, day of week) with `*`, `?`, ranges `a-b`, steps `*/s`, `a-b/s` and `a/s`, lists
//! `a,b`, month and weekday names (`JAN`, `mon`), and the macros `@yearly`/`@annually`,
//! `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`. This is what Kubernetes' CronJob
//! controller accepts (robfig/cron v3's `ParseStandard`), including its day rule: when both the
//! day of month and the day of week are restricted, a day matching either runs; when one is `*`
//! only the other counts. `@every` is not supported and is refused by name.
//!
//! Pure: parsing and the next run after a given instant, in a given time zone (jiff's, from the
//! system tz database), so the CronJob controller and the API's validation share one parser.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Why a schedule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether the day-of-month field was unrestricted (`*` or `?` without a step).
    dom_star: bool,
    /// Whether the day-of-week field was unrestricted.
    dow_star: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DOW: Field = Field {
    name: "day of week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

fn number(field: &Field, s: &str) -> Result<u32, ScheduleError> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = field.names.iter().position(|n| *n == lower) {
        return Ok(field.min + i as u32);
    }
    let n: u32 = s.parse().map_err(|_| {
        ScheduleError(format!(
            "failed to parse int from {s:?} in the {} field",
            field.name
        ))
    })?;
    if n < field.min || n > field.max {
        return Err(ScheduleError(format!(
            "{} field value {n} is out of range [{}, {}]",
            field.name, field.min, field.max
        )));
    }
    Ok(n)
}

/// One comma-separated part of a field: its bits, and whether it was a bare `*`/`?`.
fn part(field: &Field, expr: &str) -> Result<(u64, bool), ScheduleError> {
    let (range, step) = match expr.split_once('/') {
        Some((r, s)) => {
            let step: u32 = s.parse().map_err(|_| {
                ScheduleError(format!(
                    "failed to parse step {s:?} in the {} field",
                    field.name
                ))
            })?;
            if step == 0 {
                return Err(ScheduleError(format!(
                    "step of range should be a positive number: {expr}"
                )));
            }
            (r, Some(step))
        }
        None => (expr, None),
    };
    let (start, end, star) = if range == "*" || range == "?" {
        (field.min, field.max, true)
    } else if let Some((a, b)) = range.split_once('-') {
        (number(field, a)?, number(field, b)?, false)
    } else {
        let a = number(field, range)?;
        // `a/s` means from a to the end of the field, stepping by s.
        (a, if step.is_some() { field.max } else { a }, false)
    };
    if start > end {
        return Err(ScheduleError(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    let step = step.unwrap_or(1);
    let mut bits = 0u64;
    let mut v = start;
    while v <= end {
        bits |= 1 << v;
        v += step;
    }
    Ok((bits, star && step == 1))
}

fn field(field: &Field, expr: &str) -> Result<(u64, bool), ScheduleError> {
    let mut bits = 0;
    let mut star = false;
    for p in expr.split(',') {
        let (b, s) = part(field, p)?;
        bits |= b;
        star |= s;
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses a standard five-field schedule or a macro.
    pub fn parse(spec: &str) -> Result<Schedule, ScheduleError> {
        let spec = spec.trim();
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err(ScheduleError(
                "the time zone belongs in spec.timeZone, not in the schedule".into(),
            ));
        }
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => {
                return Err(ScheduleError(format!(
                    "unrecognized descriptor: {s} (supported: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)"
                )))
            }
            s => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError(format!(
                "expected exactly 5 fields, found {}: {spec}",
                fields.len()
            )));
        }
        let (minutes, _) = field(&MINUTE, fields[0])?;
        let (hours, _) = field(&HOUR, fields[1])?;
        let (days_of_month, dom_star) = field(&DOM, fields[2])?;
        let (months, _) = field(&MONTH, fields[3])?;
        let (days_of_week, dow_star) = field(&DOW, fields[4])?;
        Ok(Schedule {
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            dom_star,
            dow_star,
        })
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = self.days_of_month & (1 << dt.day()) != 0;
        let dow = self.days_of_week & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first run strictly after `after`, in `tz`; `None` if there is none within five
    /// years (a schedule such as `0 0 30 2 *`, which never runs).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.year() + 5;
        while dt.year() <= limit {
            if self.months & (1 << dt.month()) == 0 {
                dt = dt
                    .first_of_month()
                    .start_of_day()
                    .checked_add(1.month())
                    .ok()?;
                continue;
            }
            if !self.day_matches(dt) {
                dt = dt.start_of_day().checked_add(1.day()).ok()?;
                continue;
            }
            if self.hours & (1 << dt.hour()) == 0 {
                dt = dt
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << dt.minute()) == 0 {
                dt = dt.checked_add(1.minute()).ok()?;
                continue;
            }
            // A civil time in a DST gap maps forward; one that repeats maps to its first
            // instant, and the second is skipped here as already past.
            let ts = dt.to_zoned(tz.clone()).ok()?.timestamp();
            if ts > after {
                return Some(ts);
            }
            dt = dt.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// The runs a CronJob missed: how many schedule times fall in `(earliest, now]` (counted up
/// to `cap + 1`, so "more than `cap`" is visible without walking years of minutes), and the
/// latest of them (the one that would run now).
pub fn missed_runs(
    schedule: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
    cap: usize,
) -> (usize, Option<Timestamp>) {
    let mut count = 0;
    let mut last = None;
    let mut t = earliest;
    while let Some(next) = schedule.next_after(t, tz) {
        if next > now {
            break;
        }
        count += 1;
        last = Some(next);
        if count > cap {
            // Jump to the most recent one directly: step back from now.
            let mut probe = now.checked_sub(1.minute()).unwrap_or(now);
            for _ in 0..(60 * 24 * 366) {
                match schedule.next_after(probe, tz) {
                    Some(n) if n <= now => {
                        last = Some(n);
                        break;
                    }
                    _ => probe = probe.checked_sub(1.minute()).unwrap_or(probe),
                }
            }
            break;
        }
        t = next;
    }
    (count, last)
}

/// The time zone named `name` (an IANA name from the system's tz database), or UTC for none.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, ScheduleError> {
    match name {
        None => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|_| {
            ScheduleError(format!("unknown time zone {n:?} (not in the tz database)"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, after: &str) -> String {
        Schedule::parse(spec)
            .unwrap()
            .next_after(ts(after), &TimeZone::UTC)
            .unwrap()
            .to_string()
    }

    #[test]
    fn fields_ranges_steps_lists_and_names() {
        assert_eq!(
            next("*/1 * * * *", "2026-01-01T00:00:30Z"),
            "2026-01-01T00:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T00:16:00Z"),
            "2026-01-01T00:30:00Z"
        );
        assert_eq!(
            next("5 4 * * *", "2026-01-01T04:05:00Z"),
            "2026-01-02T04:05:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * *", "2026-01-01T10:00:00Z"),
            "2026-01-01T13:00:00Z"
        );
        assert_eq!(
            next("0 0 * JAN,mar *", "2026-02-01T00:00:00Z"),
            "2026-03-01T00:00:00Z"
        );
        // 2026-01-01 is a Thursday.
        assert_eq!(
            next("0 0 * * MON-FRI", "2026-01-02T00:00:00Z"),
            "2026-01-05T00:00:00Z"
        );
        assert_eq!(
            next("30 2 1/10 * *", "2026-01-01T03:00:00Z"),
            "2026-01-11T02:30:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-01-01T00:00:00Z"),
            "2026-01-01T01:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-01-01T00:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("@weekly", "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00Z"
        );
    }

    #[test]
    fn restricted_day_fields_are_ored() {
        // The 13th, or any Friday: 2026-02-06 is a Friday, before the 13th.
        assert_eq!(
            next("0 0 13 * 5", "2026-02-01T00:00:00Z"),
            "2026-02-06T00:00:00Z"
        );
        // With one of them `*`, only the other counts.
        assert_eq!(
            next("0 0 13 * *", "2026-02-01T00:00:00Z"),
            "2026-02-13T00:00:00Z"
        );
        assert_eq!(
            next("0 0 */2 * 5", "2026-02-01T00:00:00Z"),
            "2026-02-03T00:00:00Z"
        );
    }

    #[test]
    fn time_zones_and_dst() {
        let berlin = time_zone(Some("Europe/Berlin")).unwrap();
        let s = Schedule::parse("0 9 * * *").unwrap();
        assert_eq!(
            s.next_after(ts("2026-01-01T00:00:00Z"), &berlin)
                .unwrap()
                .to_string(),
            "2026-01-01T08:00:00Z"
        );
        assert_eq!(
            s.next_after(ts("2026-07-01T00:00:00Z"), &berlin)
                .unwrap()
                .to_string(),
            "2026-07-01T07:00:00Z"
        );
        // 02:30 does not exist on 2026-03-29 in Berlin: it runs at the gap's end.
        let gap = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(
            gap.next_after(ts("2026-03-28T12:00:00Z"), &berlin)
                .unwrap()
                .to_string(),
            "2026-03-29T01:30:00Z"
        );
        assert!(time_zone(Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn bad_schedules_say_why() {
        for (spec, want) in [
            ("* * * *", "expected exactly 5 fields"),
            (
                "60 * * * *",
                "minute field value 60 is out of range [0, 59]",
            ),
            (
                "* * * * 7",
                "day of week field value 7 is out of range [0, 6]",
            ),
            ("*/0 * * * *", "step of range should be a positive number"),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1)",
            ),
            ("@every 5m", "unrecognized descriptor"),
            ("TZ=UTC * * * * *", "spec.timeZone"),
            ("x * * * *", "failed to parse int from \"x\""),
        ] {
            let e = Schedule::parse(spec).unwrap_err().0;
            assert!(e.contains(want), "{spec}: {e}");
        }
        assert_eq!(
            Schedule::parse("0 0 30 2 *")
                .unwrap()
                .next_after(ts("2026-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
    }

    #[test]
    fn missed_runs_are_counted_and_capped() {
        let s = Schedule::parse("*/1 * * * *").unwrap();
        let (n, last) = missed_runs(
            &s,
            &TimeZone::UTC,
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-01T00:05:30Z"),
            100,
        );
        assert_eq!(
            (n, last.unwrap().to_string()),
            (5, "2026-01-01T00:05:00Z".into())
        );
        let (n, last) = missed_runs(
            &s,
            &TimeZone::UTC,
            ts("2026-01-01T00:00:00Z"),
            ts("2026-01-02T00:00:30Z"),
            100,
        );
        assert_eq!(
            (n, last.unwrap().to_string()),
            (101, "2026-01-02T00:00:00Z".into())
        );
        assert_eq!(
            missed_runs(
                &s,
                &TimeZone::UTC,
                ts("2026-01-01T00:00:00Z"),
                ts("2026-01-01T00:00:59Z"),
                100
            ),
            (0, None)
        );
    }

    fn brute_force(s: &Schedule, after: Timestamp) -> Option<Timestamp> {
        let mut t = after.checked_add(1.minute()).ok()?;
        t = Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(60)).ok()?;
        for _ in 0..(60 * 24 * 400) {
            let dt = t.to_zoned(TimeZone::UTC).datetime();
            if s.months & (1 << dt.month()) != 0
                && s.day_matches(dt)
                && s.hours & (1 << dt.hour()) != 0
                && s.minutes & (1 << dt.minute()) != 0
            {
                return Some(t);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }

    fn field_expr(min: u32, max: u32) -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            (min..=max).prop_map(|v| v.to_string()),
            (min..=max, min..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            (1u32..=7).prop_map(|s| format!("*/{s}")),
            (min..=max, min..=max).prop_map(|(a, b)| format!("{a},{b}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// The fast walk finds the same next run as checking every minute, and that run is
        /// strictly later and matches the schedule.
        #[test]
        fn next_run_equals_the_brute_force_answer(
            m in field_expr(0, 59), h in field_expr(0, 23), d in field_expr(1, 28),
            mo in field_expr(1, 12), w in field_expr(0, 6),
            after in 1_700_000_000i64..1_900_000_000i64,
        ) {
            let s = Schedule::parse(&format!("{m} {h} {d} {mo} {w}")).unwrap();
            let after = Timestamp::from_second(after).unwrap();
            let fast = s.next_after(after, &TimeZone::UTC);
            prop_assert_eq!(fast, brute_force(&s, after));
            if let Some(t) = fast {
                prop_assert!(t > after);
            }
        }

        /// Arbitrary input is refused with a message or parsed, never a panic.
        #[test]
        fn parsing_never_panics(spec in "[-*/,0-9a-zA-Z@? ]{0,30}") {
            let _ = Schedule::parse(&spec);
        }
    }
}
