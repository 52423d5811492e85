//! Cron expressions for `schedule.cron`: five fields (minute, hour, day of
//! month, month, day of week), each `*`, `?`, a number or name, a range
//! `a-b`, a step `*/n` or `a-b/n`, or a comma-separated list of these. UTC.
//! As in Vixie cron, when both day fields are restricted a day matching
//! either is taken.

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const MINUTE_MS: u64 = 60_000;
/// How far ahead a next time is looked for (a little over four years, so
/// 29 February is found).
const HORIZON_MINUTES: u64 = 4 * 366 * 24 * 60 + 1;

fn value(text: &str, names: &[&str], offset: u32, min: u32, max: u32) -> Result<u32, String> {
    let upper = text.to_ascii_uppercase();
    let parsed = match names.iter().position(|n| *n == upper) {
        Some(i) => i as u32 + offset,
        None => text
            .parse::<u32>()
            .map_err(|_| format!("'{text}' is not a number"))?,
    };
    // Sunday may be written 7.
    let parsed = if max == 6 && parsed == 7 { 0 } else { parsed };
    if parsed < min || parsed > max {
        return Err(format!("{parsed} is outside {min}-{max}"));
    }
    Ok(parsed)
}

fn field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    offset: u32,
) -> Result<(Vec<bool>, bool), String> {
    let mut set = vec![false; max as usize + 1];
    let any = text == "*" || text == "?";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (
                range,
                step.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step '{step}' is not a positive number"))?,
            ),
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" | "?" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (
                    value(a, names, offset, min, max)?,
                    value(b, names, offset, min, max)?,
                ),
                None => {
                    let v = value(range, names, offset, min, max)?;
                    (v, if part.contains('/') { max } else { v })
                }
            },
        };
        if from > to {
            return Err(format!("range '{range}' runs backwards"));
        }
        for v in (from..=to).step_by(step as usize) {
            set[v as usize] = true;
        }
    }
    Ok((set, any))
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "a cron expression has 5 fields (minute hour day-of-month month day-of-week), \
                 e.g. '0 0 * * *'; '{text}' has {}",
                fields.len()
            ));
        };
        let named = |what: &str, r: Result<(Vec<bool>, bool), String>| {
            r.map_err(|e| format!("cron {what} field: {e}"))
        };
        let (minutes, _) = named("minute", field(minute, 0, 59, &[], 0))?;
        let (hours, _) = named("hour", field(hour, 0, 23, &[], 0))?;
        let (days, any_day) = named("day-of-month", field(day, 1, 31, &[], 0))?;
        let (months, _) = named("month", field(month, 1, 12, &MONTHS, 1))?;
        let (weekdays, any_weekday) = named("day-of-week", field(weekday, 0, 6, &WEEKDAYS, 0))?;
        Ok(Cron {
            minutes,
            hours,
            days,
            months,
            weekdays,
            any_day,
            any_weekday,
        })
    }

    /// The first whole minute strictly after `after_ms` (Unix ms) that the
    /// expression matches, if one comes within four years.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let first = after_ms / MINUTE_MS + 1;
        (first..first + HORIZON_MINUTES)
            .find(|&minute| self.matches(minute))
            .map(|minute| minute * MINUTE_MS)
    }

    fn matches(&self, minute: u64) -> bool {
        let days_since_epoch = (minute / (24 * 60)) as i64;
        let (_, month, day) = civil_from_days(days_since_epoch);
        let weekday = (days_since_epoch + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
        let day_ok = match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => self.days[day as usize],
            (true, false) => self.weekdays[weekday],
            (false, false) => self.days[day as usize] || self.weekdays[weekday],
        };
        self.minutes[(minute % 60) as usize]
            && self.hours[((minute / 60) % 24) as usize]
            && self.months[month as usize]
            && day_ok
    }
}

/// Year, month (1-12) and day (1-31) of a day counted from 1970-01-01
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02T16:30:00Z.
    const NOW: u64 = 1_796_229_000_000;

    #[test]
    fn dates_are_computed_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days((NOW / 86_400_000) as i64), (2026, 12, 2));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn the_next_time_follows_every_field() {
        let every_minute = Cron::parse("* * * * *").expect("parses");
        assert_eq!(every_minute.next_after(NOW), Some(NOW + 60_000));
        assert_eq!(every_minute.next_after(NOW + 1), Some(NOW + 60_000));
        let daily = Cron::parse("0 0 * * *").expect("parses");
        // 2026-12-03T00:00:00Z
        assert_eq!(daily.next_after(NOW), Some(1_796_256_000_000));
        let quarter = Cron::parse("*/15 9-17 * * MON-FRI").expect("parses");
        // 2026-12-02 is a Wednesday, 16:30 → 16:45.
        assert_eq!(quarter.next_after(NOW), Some(NOW + 15 * 60_000));
        let leap = Cron::parse("0 12 29 FEB *").expect("parses");
        // 2028-02-29T12:00:00Z
        assert_eq!(leap.next_after(NOW), Some(1_835_438_400_000));
        let sunday = Cron::parse("0 0 * * 7").expect("7 is Sunday");
        // 2026-12-06T00:00:00Z
        assert_eq!(sunday.next_after(NOW), Some(1_796_515_200_000));
    }

    #[test]
    fn malformed_expressions_say_why() {
        for (text, expected) in [
            ("* * * *", "5 fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day-of-month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day-of-week"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("* * * * MON#2", "number"),
            ("0 0 31 2 *", ""),
        ] {
            match Cron::parse(text) {
                Err(e) => assert!(e.contains(expected), "{text}: {e}"),
                Ok(cron) => assert_eq!(cron.next_after(NOW), None, "{text} never matches"),
            }
        }
    }
}
